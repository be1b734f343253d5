"""Large instances written without holding them in memory: a real header, then pixel data in blocks."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

_BLOCK = 1 << 22


def write_large_instance(path: Path, pixel_bytes: int, sop_class_uid: str = "") -> Path:
    """An MR instance (MR_small's header, new UIDs) whose Pixel Data is ``pixel_bytes`` of a repeating pattern.

    Frames x Rows x Columns x 16 bits equals the pixel bytes (``pixel_bytes`` rounded down
    to whole frames of at most 1024 x 8192 pixels).
    """
    columns = 1024
    rows = min(pixel_bytes // (2 * columns), 8192)
    frames = pixel_bytes // (2 * columns * rows)
    length = frames * rows * columns * 2
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del ds.PixelData
    if "DataSetTrailingPadding" in ds:
        del ds.DataSetTrailingPadding  # Pixel Data is appended: nothing may follow it
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if sop_class_uid:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.save_as(path, enforce_file_format=True)
    block = bytes(range(256)) * (_BLOCK // 256)
    with open(path, "ab") as handle:
        handle.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        left = length
        while left:
            chunk = block[: min(left, len(block))]
            handle.write(chunk)
            left -= len(chunk)
    return path


def data_set_digest(path: Path) -> str:
    """sha256 of a Part 10 file's data set (everything after its File Meta), read in blocks."""
    with open(path, "rb") as handle:
        handle.seek(128 + 4)
        group_length = handle.read(12)
        (meta_length,) = struct.unpack_from("<I", group_length, 8)
        handle.seek(128 + 4 + 12 + meta_length)
        digest = hashlib.sha256()
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
