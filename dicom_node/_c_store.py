"""C-STORE on the wire: the command set, P-DATA-TF PDUs and what a Part 10 file says about itself.

Small pure functions for :mod:`dicom_node.scu`, which sends files as stored
instead of decoding and re-encoding them (PS3.7 9.3.1, PS3.8 9.3.5, PS3.10 7.1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node.errors import DeliveryFailed
from dicom_node.uids import is_valid_uid

#: PS3.7 Table 9.3-1 / E.1-1 command fields and values we encode ourselves
_C_STORE_RQ = 0x0001
_PRIORITY_MEDIUM = 0x0000
_DATA_SET_PRESENT = 0x0001  # anything but 0x0101 (PS3.7 E.1-1, Command Data Set Type); as pynetdicom
#: message control header of a PDV (PS3.8 E.2): bit 0 command, bit 1 last fragment
COMMAND_LAST = 0x03
DATA = 0x00
DATA_LAST = 0x02
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows (PS3.7 E.1-1)
_P_DATA_TF = 0x04  # PDU type (PS3.8 Table 9-22)
PDV_OVERHEAD = 6  # PDV item length (4), presentation context ID (1), message control header (1)
UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255


class UnsendableFile(DeliveryFailed):
    """The file itself cannot be sent (missing, not DICOM, no usable meta); retrying will not help."""


@dataclass(frozen=True)
class FileInfo:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    offset: int  # where the data set starts, after the preamble and file meta


_META_KEYWORDS = {
    0x00020002: "MediaStorageSOPClassUID",
    0x00020003: "MediaStorageSOPInstanceUID",
    0x00020010: "TransferSyntaxUID",
}
#: explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PREAMBLE = 128


def _scan_meta(head: bytes) -> tuple[dict[str, str], int] | None:
    """The file meta's UIDs and where the data set starts, or None when this is not a plain Part 10 header.

    PS3.10 7.1: a 128-byte preamble, ``DICM``, then group 0002 in Explicit VR
    Little Endian. About ten times cheaper than a pydicom parse, which matters at
    hundreds of files a second.
    """
    if head[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        return None
    values: dict[str, str] = {}
    pos = _PREAMBLE + 4
    while pos + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            return values, pos
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                return None
            length = struct.unpack_from("<I", head, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", head, pos + 6)[0]
            start = pos + 8
        if start + length > len(head):
            return None
        keyword = _META_KEYWORDS.get((group << 16) | element)
        if keyword:
            values[keyword] = head[start : start + length].decode("ascii", "replace")
        pos = start + length
    return None


def read_info(path: Path) -> FileInfo:
    """The SOP class, instance and transfer syntax from a Part 10 file's meta (PS3.10 7.1)."""
    try:
        with open(path, "rb") as handle:
            scanned = _scan_meta(handle.read(8192))
        if scanned is None:  # unusual layout (huge meta, no preamble): let pydicom read it
            meta, offset = split_dataset(path)
            scanned = ({k: str(meta.get(k, "") or "") for k in _META_KEYWORDS.values()}, offset)
    except FileNotFoundError:
        raise UnsendableFile(f"result file {str(path)!r} does not exist") from None
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        raise UnsendableFile(f"result file {str(path)!r} is not a readable DICOM Part 10 file: {exc}") from None
    found, offset = scanned
    values = []
    for keyword in _META_KEYWORDS.values():
        value = found.get(keyword, "").strip("\0 ")
        if not is_valid_uid(value):
            raise UnsendableFile(f"result file {str(path)!r} has no valid {keyword} in its file meta (got {value!r})")
        values.append(value)
    return FileInfo(path, values[0], values[1], values[2], offset)


def _element(tag: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element (PS3.5 7.1.3)."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii", errors="replace")
    return raw + b"\0" * (len(raw) % 2)  # UI values are padded with NUL to even length (PS3.5 6.2)


def encode_c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The C-STORE-RQ command set (PS3.7 Table 9.3-1), Implicit VR Little Endian (PS3.7 6.3.1)."""
    body = b"".join(
        (
            _element(0x00000002, _uid_value(sop_class_uid)),
            _element(0x00000100, struct.pack("<H", _C_STORE_RQ)),
            _element(0x00000110, struct.pack("<H", message_id)),
            _element(0x00000700, struct.pack("<H", _PRIORITY_MEDIUM)),
            _element(0x00000800, struct.pack("<H", _DATA_SET_PRESENT)),
            _element(0x00001000, _uid_value(sop_instance_uid)),
        )
    )
    return _element(0x00000000, struct.pack("<I", len(body))) + body


def encode_c_store_rsp(message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int) -> bytes:
    """The C-STORE-RSP command set (PS3.7 Table 9.3-2) in Implicit VR Little Endian, as pynetdicom encodes it.

    An empty UID is left out (both are optional in a response: PS3.7 Table 9.3-2, "U(=)").
    """
    body = b"".join(
        (
            _element(0x00000002, _uid_value(sop_class_uid)) if sop_class_uid else b"",
            _element(0x00000100, struct.pack("<H", _C_STORE_RSP)),
            _element(0x00000120, struct.pack("<H", message_id)),
            _element(0x00000800, struct.pack("<H", _NO_DATA_SET)),
            _element(0x00000900, struct.pack("<H", status)),
            _element(0x00001000, _uid_value(sop_instance_uid)) if sop_instance_uid else b"",
        )
    )
    return _element(0x00000000, struct.pack("<I", len(body))) + body


def contexts_for(infos: Iterable[FileInfo]) -> list[PresentationContext]:
    """One context per (SOP class, stored transfer syntax), so files can go as stored (PS3.8 9.3.2.2).

    A SOP class with uncompressed files also gets a fallback context offering both
    Little Endian syntaxes, for a peer that accepts only the other one.
    """
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for info in infos:
        wanted[(info.sop_class_uid, (info.transfer_syntax,))] = None
    for sop_class, (syntax,) in list(wanted):
        if syntax in UNCOMPRESSED:
            wanted[(sop_class, UNCOMPRESSED)] = None
    if len(wanted) > _MAX_CONTEXTS:
        raise DeliveryFailed(
            f"a batch needs {len(wanted)} presentation contexts, at most {_MAX_CONTEXTS} fit one association"
        )
    return [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in wanted]


def encode_p_data_tf(pdvs: Iterable[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5) of ``(context id, message control header, bytes)`` PDVs."""
    body = b"".join(struct.pack(">IBB", len(data) + 2, cx, header) + data for cx, header, data in pdvs)
    return struct.pack(">BBI", _P_DATA_TF, 0, len(body)) + body
