"""The File Meta Information the node writes before each received data set (PS3.10 section 7.1).

The storage SCP keeps the bytes exactly as they arrived (never re-encoded);
:mod:`dicom_node._scan` walks them as they stream in, and :func:`file_meta`
encodes the header that precedes them on disk.
"""

from __future__ import annotations

import struct

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "file_meta"]

#: Our implementation identity in the File Meta (PS3.7 D.3.3.2); the root is the pydicom org root.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1.7.1"
IMPLEMENTATION_VERSION_NAME = "APPLIANCE_010"


def _element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 7.1.2), value padded to even length."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    tag = struct.pack("<HH", group_elem >> 16, group_elem & 0xFFFF)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str = "") -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 section 7.1)."""
    body = b"".join(
        (
            _element(0x00020001, b"OB", b"\x00\x01"),
            _element(0x00020002, b"UI", sop_class_uid.encode("ascii")),
            _element(0x00020003, b"UI", sop_instance_uid.encode("ascii")),
            _element(0x00020010, b"UI", transfer_syntax.encode("ascii")),
            _element(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _element(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
        )
    )
    if source_ae:
        body += _element(0x00020016, b"AE", source_ae.encode("ascii", errors="replace")[:16])
    group_length = _element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body
