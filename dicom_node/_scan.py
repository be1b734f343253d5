"""Scanning a received data set as it streams in, without decoding it or holding it whole.

:class:`StreamScanner` is fed the encoded data set fragment by fragment (as
P-DATA arrives) and walks its element headers (PS3.5 section 7.1: tag, VR,
length; 7.5: sequences and items; A.4: encapsulated pixel data) with a state
machine whose memory is a few small buffers, whatever the data set's size:

- values are skipped, never copied, except the top-level attributes the node
  needs (UIDs, Modality, Series Description, ...) and a small *header blob*:
  the raw top-level elements of at most :data:`HEADER_VALUE_LIMIT` bytes
  (private groups and bulk data left out), which routing reads instead of the
  file (:func:`read_header_blob`), so nothing downstream inflates or parses
  the instance again;
- a Deflated Explicit VR Little Endian data set (PS3.5 A.5) is inflated here,
  once, in bounded steps: past ``max_inflated`` bytes, or a ratio of inflated
  to received bytes above ``max_ratio`` (a deflate bomb), it is refused with
  :class:`InflationRefused`;
- nesting of undefined-length sequences and items is bounded by ``max_depth``
  (:class:`NestingTooDeep`), so no later reader of a stored instance meets a
  recursion it cannot handle;
- :meth:`StreamScanner.finish` refuses a data set that ends inside an element
  (:class:`MalformedDataset`).

Defined-length sequences and items are skipped as opaque values, as they need
no walking to be delimited.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicom_node.errors import NodeError

__all__ = [
    "DatasetHeader",
    "DataSetTooLarge",
    "InflationRefused",
    "MalformedDataset",
    "NestingTooDeep",
    "StreamScanner",
    "read_header_blob",
    "scan_dataset",
]

IMPLICIT_VR_LITTLE_ENDIAN = str(ImplicitVRLittleEndian)
EXPLICIT_VR_LITTLE_ENDIAN = str(ExplicitVRLittleEndian)
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = str(DeflatedExplicitVRLittleEndian)
EXPLICIT_VR_BIG_ENDIAN = str(ExplicitVRBigEndian)

#: top-level values at most this long go into the header blob
HEADER_VALUE_LIMIT = 1024
#: the header blob stops growing here (a few hundred attributes fit)
HEADER_BLOB_LIMIT = 64 * 1024
#: inflation output per step: the most inflated bytes held at once
INFLATE_STEP = 1 << 20
#: the ratio limit applies once this much is inflated (small data sets compress well legitimately)
RATIO_FLOOR = 16 << 20

_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_BULK_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UN"})
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


class NestingTooDeep(MalformedDataset):
    """Sequences and items nest deeper than the node walks."""


class DataSetTooLarge(NodeError):
    """The data set is larger than the limit for its SOP class."""


class InflationRefused(NodeError):
    """A deflated data set inflates past the size or ratio limit (a deflate bomb)."""


@dataclass(frozen=True)
class DatasetHeader:
    """The top-level attributes the node needs, as text (empty when absent), and the header blob."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    series_description: str = ""
    specific_character_set: str = ""
    #: raw top-level elements (see module docstring), encoded as :attr:`blob_syntax` says
    blob: bytes = b""
    #: the transfer syntax the blob is encoded in (Explicit VR LE for a deflated data set)
    blob_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN


def _layout(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) for a transfer syntax UID (PS3.5 section 10)."""
    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        return True, True, False
    if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        return False, False, False
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return False, True, True
    return False, True, False  # every other transfer syntax: explicit VR little endian (PS3.5 A.4)


class StreamScanner:
    """Walks one encoded data set fed in fragments; see the module docstring.

    ``max_bytes`` bounds the bytes received (0: no bound); for a deflated data
    set ``max_inflated`` bounds the inflated bytes and ``max_ratio`` their ratio
    to the received ones.
    """

    def __init__(
        self,
        transfer_syntax: str,
        max_bytes: int = 0,
        max_inflated: int = 1 << 30,
        max_ratio: float = 100.0,
        max_depth: int = 32,
    ) -> None:
        self.transfer_syntax = transfer_syntax
        implicit, little, deflated = _layout(transfer_syntax)
        self._implicit = implicit
        prefix = "<" if little else ">"
        self._u16 = struct.Struct(prefix + "H").unpack_from
        self._u32 = struct.Struct(prefix + "I").unpack_from
        self._tag = struct.Struct(prefix + "HH").unpack_from
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if deflated else None
        self.max_bytes = max_bytes
        self.max_inflated = max_inflated
        self.max_ratio = max_ratio
        self.max_depth = max_depth
        self.received = 0  #: encoded bytes fed
        self.walked = 0  #: bytes walked (inflated bytes for a deflated data set)
        self._head = bytearray()  # an element or item header being assembled
        self._skip = 0  # bytes of the current value still to pass
        self._capture: bytearray | None = None
        self._capture_tag = 0
        self._stack: list[tuple[bool, bool]] = []  # (is a sequence, implicit VR) of open undefined-length containers
        self._found: dict[int, bytes] = {}
        self._blob = bytearray()

    def feed(self, data: bytes | memoryview) -> None:
        """Walk the next fragment of the encoded data set."""
        self.received += len(data)
        if self.max_bytes and self.received > self.max_bytes:
            raise DataSetTooLarge(f"data set exceeds {self.max_bytes} bytes")
        if self._inflater is None:
            self._walk(memoryview(data))
            return
        pending: bytes | memoryview = data
        while pending:
            try:
                out = self._inflater.decompress(pending, INFLATE_STEP)
            except zlib.error as exc:
                raise MalformedDataset(f"deflated data set does not inflate: {exc}") from None
            pending = self._inflater.unconsumed_tail
            self._check_inflation(len(out))
            self._walk(memoryview(out))
            if self._inflater.eof:
                return

    def _check_inflation(self, more: int) -> None:
        inflated = self.walked + more
        if inflated > self.max_inflated:
            raise InflationRefused(f"deflated data set inflates past {self.max_inflated} bytes")
        if inflated > RATIO_FLOOR and inflated > self.max_ratio * self.received:
            raise InflationRefused(
                f"deflated data set inflates more than {self.max_ratio:g} times "
                f"({inflated} bytes from {self.received})"
            )

    def finish(self) -> DatasetHeader:
        """Check the data set ended where an element ends and return what was found."""
        if self._inflater is not None:
            try:
                rest = self._inflater.flush()
            except zlib.error as exc:
                raise MalformedDataset(f"deflated data set does not inflate: {exc}") from None
            self._check_inflation(len(rest))
            self._walk(memoryview(rest))
            if not self._inflater.eof:
                raise MalformedDataset("deflated data set is truncated: the deflate stream does not end")
        if self._head or self._skip:
            raise MalformedDataset(f"data set truncated inside an element that starts before offset {self.walked}")
        if self._stack:
            raise MalformedDataset(f"data set truncated: {len(self._stack)} sequence(s) or item(s) not delimited")
        return self._header()

    def _walk(self, data: memoryview) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                if self._capture is not None:
                    self._capture += data[i : i + take]
                self._skip -= take
                i += take
                self.walked += take
                if not self._skip and self._capture is not None:
                    self._end_capture()
                continue
            need = self._header_length()
            take = min(need - len(self._head), n - i)
            self._head += data[i : i + take]
            i += take
            self.walked += take
            if len(self._head) == need and self._header_length() == need:
                self._element()

    def _header_length(self) -> int:
        """8 bytes, or 12 for an explicit VR with a 4-byte length (known once 6 bytes are in)."""
        if len(self._head) < 6:
            return 8
        implicit = self._stack[-1][1] if self._stack else self._implicit
        in_sequence = bool(self._stack) and self._stack[-1][0]
        if implicit or in_sequence or self._tag(self._head, 0)[0] == 0xFFFE:
            return 8
        return 12 if bytes(self._head[4:6]) in _LONG_LENGTH_VRS else 8

    def _element(self) -> None:
        """Act on the complete header in ``_head``."""
        head = bytes(self._head)
        self._head.clear()
        group, elem = self._tag(head, 0)
        tag = (group << 16) | elem
        in_sequence, implicit = self._stack[-1] if self._stack else (False, self._implicit)
        if len(head) == 12:
            vr, (length,) = head[4:6], self._u32(head, 8)
        elif implicit or in_sequence or group == 0xFFFE:
            vr, (length,) = b"", self._u32(head, 4)
        else:
            vr, (length,) = head[4:6], self._u16(head, 6)
        if in_sequence:
            self._sequence_member(tag, length, implicit)
            return
        if tag == _ITEM_END:
            if not self._stack:
                raise MalformedDataset(f"unexpected item delimitation at offset {self.walked - 8}")
            self._stack.pop()
            return
        if group == 0xFFFE:
            raise MalformedDataset(f"unexpected delimiter {tag:08X} at offset {self.walked - 8}")
        if length == _UNDEFINED:  # PS3.5 7.5.1 / A.4: a sequence, encapsulated pixel data, UN of implicit items
            self._push(True, implicit or vr == b"UN")
            return
        self._skip = length
        if not self._stack and length <= HEADER_VALUE_LIMIT and group % 2 == 0 and group != 0x7FE0:
            if vr not in _BULK_VRS:
                self._capture, self._capture_tag = bytearray(head), tag
                if not length:
                    self._end_capture()

    def _sequence_member(self, tag: int, length: int, implicit: bool) -> None:
        if tag == _SEQUENCE_END:
            self._stack.pop()
        elif tag != _ITEM:
            raise MalformedDataset(f"expected an item tag at offset {self.walked - 8}, found {tag:08X}")
        elif length == _UNDEFINED:
            self._push(False, implicit)
        else:
            self._skip = length  # a defined-length item or an encapsulated fragment: opaque

    def _push(self, is_sequence: bool, implicit: bool) -> None:
        if len(self._stack) >= 2 * self.max_depth:
            raise NestingTooDeep(f"sequences nest deeper than {self.max_depth} levels at offset {self.walked}")
        self._stack.append((is_sequence, implicit))

    def _end_capture(self) -> None:
        element = bytes(self._capture or b"")
        self._capture = None
        value = element[12:] if len(element) >= 12 and self._long_header(element) else element[8:]
        if self._capture_tag in _WANTED:
            self._found[self._capture_tag] = value
        if len(self._blob) + len(element) <= HEADER_BLOB_LIMIT:
            self._blob += element

    def _long_header(self, element: bytes) -> bool:
        return not self._implicit and element[4:6] in _LONG_LENGTH_VRS

    def _header(self) -> DatasetHeader:
        found = self._found
        fields = {name: _text(found[tag]) for tag, name in _WANTED.items() if tag in found}
        blob_syntax = EXPLICIT_VR_LITTLE_ENDIAN if self._inflater is not None else self.transfer_syntax
        header = DatasetHeader(**fields, blob=bytes(self._blob), blob_syntax=blob_syntax)
        if 0x0008103E in found:
            description = _description(header)
            header = DatasetHeader(**{**header.__dict__, "series_description": description})
        return header


def _text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").rstrip("\x00 ").lstrip(" ")


def read_header_blob(blob: bytes, blob_syntax: str) -> Dataset:
    """The header blob of a scanned data set as a pydicom :class:`Dataset` (no pixel data, no file)."""
    implicit, little, _ = _layout(blob_syntax)
    return read_dataset(BytesIO(blob), implicit, little)


def _description(header: DatasetHeader) -> str:
    """Series Description decoded with pydicom's own Specific Character Set handling (PS3.5 6.1, ISO 2022)."""
    try:
        value = read_header_blob(header.blob, header.blob_syntax).get("SeriesDescription", "")
        return str(value or "").strip()
    except Exception:  # noqa: BLE001 - an undecodable description must not refuse the instance
        return header.series_description


def scan_dataset(buf: bytes | memoryview, transfer_syntax: str, **limits: float) -> DatasetHeader:
    """Scan a data set held whole (small ones: tests, the fallback path); see :class:`StreamScanner`."""
    scanner = StreamScanner(transfer_syntax, **limits)  # type: ignore[arg-type]
    scanner.feed(buf)
    return scanner.finish()
