"""Crafted inputs for the hardening tests: raw A-ASSOCIATE-RQs, deflate bombs, deep nesting."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from dicom_node._dataset import file_meta

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(calling: bytes, called: bytes = b"APPLIANCE") -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing Verification, with raw AE title bytes."""
    app = _item(0x10, b"1.2.840.10008.3.1.1.1")
    context = _item(0x20, bytes((1, 0, 0, 0)) + _item(0x30, b"1.2.840.10008.1.1") + _item(0x40, b"1.2.840.10008.1.2"))
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16)[:16] + calling.ljust(16)[:16] + b"\0" * 32
            + app + context + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _header_bytes(**values: str) -> tuple[bytes, str]:
    """MR_small's top-level elements without Pixel Data, Explicit VR Little Endian, new UIDs."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    if "DataSetTrailingPadding" in ds:
        del ds.DataSetTrailingPadding
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    encoded = out.getvalue()
    (meta_length,) = struct.unpack_from("<I", encoded, 128 + 4 + 8)
    return encoded[128 + 4 + 12 + meta_length :], str(ds.SOPInstanceUID)


def write_part10(path: Path, data_set: bytes, sop_instance: str, syntax: str = str(ExplicitVRLittleEndian)) -> Path:
    path.write_bytes(file_meta(MR_IMAGE_STORAGE, sop_instance, syntax) + data_set)
    return path


def deflate_bomb(path: Path, inflated: int) -> Path:
    """A Deflated Explicit VR LE instance whose data set inflates to about ``inflated`` bytes of zeros."""
    header, sop = _header_bytes()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated)
    parts = [compressor.compress(header + element) + compressor.flush(zlib.Z_FULL_FLUSH)]
    block = 1 << 22
    # after a full flush the compressor starts afresh: one compressed block of zeros repeats as it is
    zeros = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    parts.append(zeros * (inflated // block))
    parts.append(compressor.compress(bytes(inflated % block)) + compressor.flush())
    return write_part10(path, b"".join(parts), sop, str(DeflatedExplicitVRLittleEndian))


def deflated_instance(path: Path, **values: str) -> Path:
    """A small, legitimate Deflated Explicit VR LE instance."""
    header, sop = _header_bytes(**values)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(header + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 8) + bytes(8))
    return write_part10(path, body + compressor.flush(), sop, str(DeflatedExplicitVRLittleEndian))


def deeply_nested(path: Path, depth: int) -> Path:
    """An instance whose one sequence nests ``depth`` levels deep (undefined lengths)."""
    header, sop = _header_bytes()
    seq = struct.pack("<HH2sHI", 0x0040, 0x0260, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    nested = (seq + item) * depth + (item_end + seq_end) * depth
    # (0040,0260) sorts after the header's last element below (0040,xxxx)? keep order: append at the end
    return write_part10(path, header + nested, sop)
