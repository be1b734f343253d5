"""Reading just enough of a received data set, without decoding it, and the File Meta header.

The storage SCP keeps the bytes exactly as they arrived (never re-encoded), so it
does not build a pydicom ``Dataset``. Instead :func:`scan_dataset` walks the
element headers of the encoded data set (PS3.5 section 7.1: tag, VR, length;
section 7.5: sequences and items; A.4: encapsulated pixel data), checks that
every value lies inside the received bytes (a truncated data set is rejected),
and picks out the few top-level attributes the node needs. :func:`file_meta`
encodes the File Meta Information (PS3.10 section 7.1) that precedes the data
set on disk.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from dicom_node.errors import NodeError

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

#: Our implementation identity in the File Meta (PS3.7 D.3.3.2); the root is the pydicom org root.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1.7.1"
IMPLEMENTATION_VERSION_NAME = "APPLIANCE_010"

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD

#: top-level attributes the node reads: tag -> field name of :class:`DatasetHeader`
_WANTED = {
    0x00080005: "specific_character_set",
    0x00080016: "sop_class_uid",
    0x00080018: "sop_instance_uid",
    0x00080060: "modality",
    0x0008103E: "series_description",
    0x0020000D: "study_uid",
    0x0020000E: "series_uid",
}


class MalformedDataset(NodeError):
    """The received data set cannot be parsed (truncated, bad lengths, bad deflate stream)."""


@dataclass(frozen=True)
class DatasetHeader:
    """The top-level attributes the node needs, as text (empty when absent)."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    series_description: str = ""
    specific_character_set: str = ""


def is_valid_uid(value: str) -> bool:
    """A UID per PS3.5 section 9.1: digits and dots, no empty component, at most 64 characters."""
    return 0 < len(value) <= 64 and _UID.match(value) is not None


def _layout(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) for a transfer syntax UID (PS3.5 section 10)."""
    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        return True, True, False
    if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        return False, False, False
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return False, True, True
    return False, True, False  # every other transfer syntax: explicit VR little endian (PS3.5 A.4)


class _Walker:
    """Walks element headers of one encoded data set; values are never copied except the wanted ones."""

    def __init__(self, buf: bytes | memoryview, little: bool) -> None:
        self.buf = memoryview(buf)
        self.end = len(self.buf)
        prefix = "<" if little else ">"
        self.u16 = struct.Struct(prefix + "H").unpack_from
        self.u32 = struct.Struct(prefix + "I").unpack_from
        self.tag = struct.Struct(prefix + "HH").unpack_from
        self.found: dict[int, bytes] = {}

    def _need(self, offset: int, count: int) -> None:
        if offset + count > self.end:
            raise MalformedDataset(f"data set truncated: {count} bytes needed at offset {offset}, only {self.end} received")

    def elements(self, offset: int, stop: int, implicit: bool, top: bool, until_item_end: bool = False) -> int:
        """Walk elements from ``offset`` until ``stop`` (or an Item Delimitation); return the end offset."""
        while offset < stop:
            self._need(offset, 8)
            group, elem = self.tag(self.buf, offset)
            tag = (group << 16) | elem
            if tag == _ITEM_END:
                if not until_item_end:
                    raise MalformedDataset(f"unexpected item delimitation at offset {offset}")
                return offset + 8
            if implicit or group == 0xFFFE:
                vr = b""
                (length,) = self.u32(self.buf, offset + 4)
                offset += 8
            else:
                vr = bytes(self.buf[offset + 4 : offset + 6])
                if vr in _LONG_LENGTH_VRS:
                    self._need(offset, 12)
                    (length,) = self.u32(self.buf, offset + 8)
                    offset += 12
                else:
                    (length,) = self.u16(self.buf, offset + 6)
                    offset += 8
            if length == _UNDEFINED:
                # PS3.5 7.5.1 / A.4: a sequence, encapsulated pixel data, or UN holding implicit VR LE items
                offset = self.items(offset, implicit or vr == b"UN")
                continue
            self._need(offset, length)
            if top and tag in _WANTED:
                self.found[tag] = bytes(self.buf[offset : offset + length])
            offset += length
        if until_item_end:
            raise MalformedDataset("item without item delimitation before the end of the data set")
        if offset != stop:
            raise MalformedDataset(f"element overruns its container: ends at {offset}, container at {stop}")
        return offset

    def items(self, offset: int, implicit: bool) -> int:
        """Walk the items of an undefined-length value up to its Sequence Delimitation Item."""
        while True:
            self._need(offset, 8)
            group, elem = self.tag(self.buf, offset)
            tag = (group << 16) | elem
            (length,) = self.u32(self.buf, offset + 4)
            offset += 8
            if tag == _SEQUENCE_END:
                return offset
            if tag != _ITEM:
                raise MalformedDataset(f"expected an item tag at offset {offset - 8}, found {tag:08X}")
            if length == _UNDEFINED:
                offset = self.elements(offset, self.end, implicit, top=False, until_item_end=True)
            else:
                self._need(offset, length)
                offset += length


def _text(raw: bytes, encoding: str = "ascii") -> str:
    return raw.decode(encoding, errors="replace").rstrip("\x00 ").lstrip(" ")


def _decode_description(raw: bytes, charset: str) -> str:
    """Series Description (LO) in the data set's Specific Character Set (PS3.5 6.1.2.3)."""
    from pydicom.charset import decode_bytes

    encodings = [c.strip() for c in charset.split("\\")] if charset else ["ISO_IR 6"]
    try:
        return decode_bytes(raw, encodings, set()).rstrip("\x00 ").lstrip(" ")
    except Exception:  # noqa: BLE001 - a bad character set must not refuse the instance
        return _text(raw, "latin-1")


def scan_dataset(buf: bytes | memoryview, transfer_syntax: str) -> DatasetHeader:
    """Check an encoded data set is complete and return its identifying attributes.

    Raises :class:`MalformedDataset` when the bytes end inside an element, a length
    overruns its container, or a deflated stream does not inflate (PS3.5 A.5).
    """
    implicit, little, deflated = _layout(transfer_syntax)
    if deflated:
        try:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            buf = inflater.decompress(buf) + inflater.flush()
        except zlib.error as exc:
            raise MalformedDataset(f"deflated data set does not inflate: {exc}") from None
        if not inflater.eof:
            raise MalformedDataset("deflated data set is truncated: the deflate stream does not end")
    walker = _Walker(buf, little)
    walker.elements(0, walker.end, implicit, top=True)
    found = walker.found
    charset = _text(found.get(0x00080005, b""))
    fields = {name: _text(found[tag]) for tag, name in _WANTED.items() if tag in found and tag != 0x0008103E}
    if 0x0008103E in found:
        fields["series_description"] = _decode_description(found[0x0008103E], charset)
    return DatasetHeader(**fields)


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
