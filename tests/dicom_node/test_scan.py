"""The streaming scanner: same answer however the data set is split, bounded inflation and nesting, one UID rule."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_node._scan import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    DataSetTooLarge,
    InflationRefused,
    MalformedDataset,
    NestingTooDeep,
    StreamScanner,
    read_header_blob,
    scan_dataset,
)
from dicom_node.spool import InvalidUid, check_uid
from dicom_node.uids import is_valid_uid
from tests.dicom_node._node import dataset_bytes


def _scan_in_pieces(data: bytes, syntax: str, sizes: list[int]) -> object:
    scanner = StreamScanner(syntax)
    start = 0
    for size in sizes:
        scanner.feed(data[start : start + size])
        start += size
    scanner.feed(data[start:])
    return scanner.finish()


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"])
def test_any_split_gives_the_same_header(name: str) -> None:
    path = Path(get_testdata_file(name))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    data = dataset_bytes(path)
    whole = scan_dataset(data, syntax)
    assert whole.sop_instance_uid == ds.SOPInstanceUID and whole.series_uid == ds.SeriesInstanceUID
    for sizes in ([1] * 300, [7, 5, 3, 11, 13] * 40, [len(data) // 2], [4096] * 3):
        assert _scan_in_pieces(data, syntax, sizes) == whole
    header = read_header_blob(whole.blob, whole.blob_syntax)
    assert header.SOPInstanceUID == ds.SOPInstanceUID and header.get("Modality") == ds.get("Modality")
    assert "PixelData" not in header


def test_truncated_at_every_point_is_malformed() -> None:
    data = dataset_bytes(get_testdata_file("MR_small.dcm"))
    for cut in (3, 8, 100, len(data) - 1):
        with pytest.raises(MalformedDataset):
            scan_dataset(data[:cut], "1.2.840.10008.1.2.1")


def test_size_limit_and_inflation_limits() -> None:
    data = dataset_bytes(get_testdata_file("MR_small.dcm"))
    with pytest.raises(DataSetTooLarge, match="exceeds 1000 bytes"):
        scan_dataset(data, "1.2.840.10008.1.2.1", max_bytes=1000)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    element = struct.pack("<HH2sHI", 0x0009, 0x0010, b"OB", 0, 64 << 20)  # a private bulk element of zeros
    bomb = compressor.compress(element + bytes(64 << 20)) + compressor.flush()
    with pytest.raises(InflationRefused, match="more than 100 times"):
        scan_dataset(bomb, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(InflationRefused, match="past 1048576 bytes"):
        scan_dataset(bomb, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, max_inflated=1 << 20, max_ratio=1e9)


def test_nesting_is_bounded() -> None:
    seq = struct.pack("<HH2sHI", 0x0040, 0x0260, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    assert scan_dataset((seq + item) * 5 + ends * 5, "1.2.840.10008.1.2.1").sop_instance_uid == ""
    with pytest.raises(NestingTooDeep, match="deeper than 4 levels"):
        scan_dataset((seq + item) * 5 + ends * 5, "1.2.840.10008.1.2.1", max_depth=4)


@pytest.mark.parametrize(
    ("value", "valid"),
    [("1.2.840.10008.1.2", True), ("0", True), ("2.25.0", True), ("1.2.3\n", False), ("1.2.3 ", False),
     ("1.02.3", False), ("1..2", False), (".1.2", False), ("1.2.", False), ("1" * 64, True), ("1" * 65, False),
     ("", False), ("1.2.abc", False), ("１.２", False)],
)
def test_one_uid_rule(value: str, valid: bool) -> None:
    assert is_valid_uid(value) is valid
    if not valid:
        with pytest.raises(InvalidUid, match="is not a valid UID"):
            check_uid(value, "Study Instance UID")
