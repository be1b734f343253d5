"""One part of a STOW-RS request: a DICOM Part 10 instance streamed into the node's durable path.

A part is an ``application/dicom`` Part 10 file (PS3.18 8.6.1.1, PS3.10 7.1).
:class:`PartReceiver` holds its first bytes until the File Meta is complete
(at most :data:`MAX_META_BYTES`), reads the SOP class, instance and transfer
syntax from it, then begins a :class:`~dicom_node._receive.Reception` from the
:class:`~dicom_node.store.InstanceStore` (the same as a C-STORE's) and streams
the data set's bytes into it as they arrive. The sender's File Meta is not
kept: the stored file has ours, as for a C-STORE, and the data set byte for
byte as sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node._c_store import _scan_meta
from dicom_node._multipart import content_type_params
from dicom_node._receive import Reception
from dicom_node._storage_classes import TRANSFER_SYNTAXES
from dicom_node.store import InstanceStore, Outcome, StoreStatus
from dicom_node.uids import is_valid_uid

__all__ = ["MAX_META_BYTES", "PartReceiver", "ReceivedPart", "STUDY_UID_MISMATCH", "store_part"]

#: the preamble, ``DICM`` and the File Meta group of a part must fit in this many bytes
MAX_META_BYTES = 64 * 1024
#: PS3.18 10.5.3 Failure Reason when the instance's Study Instance UID is not the one in the URL
STUDY_UID_MISMATCH = StoreStatus.DATASET_MISMATCH
_PREAMBLE_AND_PREFIX = 132
_PART_TYPES = ("application/dicom", "")


@dataclass
class ReceivedPart:
    """A part whose bytes have all arrived: its UIDs (empty when unknown) and a reception or an outcome."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    reception: Reception | None
    outcome: Outcome | None


class PartReceiver:
    """Receives one part's bytes; :meth:`end` says what to store or why not.

    ``sop_classes`` are the SOP classes the node stores (as for C-STORE's
    presentation contexts); ``source`` names the client in the File Meta, the
    record and the logs.
    """

    def __init__(self, store: InstanceStore, source: str, headers: dict[str, str], sop_classes: frozenset[str]) -> None:
        self._store = store
        self._source = source
        self._sop_classes = sop_classes
        self._head: bytearray | None = bytearray()
        self._reception: Reception | None = None
        self._outcome: Outcome | None = None
        self.sop_class_uid = self.sop_instance_uid = self.transfer_syntax = ""
        media_type, _ = content_type_params(headers.get("content-type", ""))
        if media_type not in _PART_TYPES:
            self._refuse(StoreStatus.CANNOT_UNDERSTAND, "part is not application/dicom",
                         f"a part of media type {media_type[:60]!r} is not application/dicom")

    def write(self, data: bytes) -> None:
        """The part's next bytes."""
        if self._reception is not None:
            self._reception.write(data)
            return
        if self._head is None:
            return  # refused: the rest of the part is read and dropped
        self._head += data
        self._parse_meta(final=False)

    def end(self) -> ReceivedPart:
        """The part is complete."""
        if self._head is not None and self._reception is None:
            self._parse_meta(final=True)
        return ReceivedPart(self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax,
                            self._reception, self._outcome)

    def abandon(self) -> None:
        """The request ended before this part did: nothing of it may remain."""
        if self._reception is not None:
            self._reception.abandon()

    def _refuse(self, status: StoreStatus, comment: str, reason: str) -> None:
        self._head = None
        self._outcome = self._store.refuse(Outcome(status, comment), self._source, reason)

    def _parse_meta(self, final: bool) -> None:
        """Begin the reception once the File Meta is complete (PS3.10 7.1); refuse what is not Part 10."""
        head = self._head
        assert head is not None
        if len(head) >= _PREAMBLE_AND_PREFIX and head[128:132] != b"DICM":
            self._refuse(StoreStatus.CANNOT_UNDERSTAND, "part is not a DICOM Part 10 file",
                         "a part has no DICM prefix: not a DICOM Part 10 file (PS3.10 7.1)")
            return
        scanned = _scan_meta(bytes(head[:MAX_META_BYTES])) if len(head) >= _PREAMBLE_AND_PREFIX else None
        if scanned is None:
            if final or len(head) > MAX_META_BYTES:
                self._refuse(StoreStatus.CANNOT_UNDERSTAND, "part has no complete File Meta",
                             f"a part ends inside its File Meta, or its File Meta exceeds {MAX_META_BYTES} bytes")
            return
        values, offset = scanned
        sop_class, sop_instance, syntax = (values.get(keyword, "").strip("\0 ") for keyword in (
            "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"))
        self.sop_class_uid = sop_class if is_valid_uid(sop_class) else ""
        self.sop_instance_uid = sop_instance if is_valid_uid(sop_instance) else ""
        if not (self.sop_class_uid and self.sop_instance_uid and is_valid_uid(syntax)):
            self._refuse(StoreStatus.INVALID_UID, "File Meta SOP Class, Instance or Transfer Syntax UID invalid",
                         "a part's File Meta lacks a valid SOP Class, SOP Instance or Transfer Syntax UID")
            return
        if sop_class not in self._sop_classes:
            self._refuse(StoreStatus.SOP_CLASS_NOT_SUPPORTED, "SOP Class not supported",
                         f"SOP Class {sop_class} is not one the node stores")
            return
        if syntax not in TRANSFER_SYNTAXES:
            self._refuse(StoreStatus.TRANSFER_SYNTAX_NOT_SUPPORTED, "Transfer Syntax not supported",
                         f"Transfer Syntax {syntax} is not one the node accepts")
            return
        self.transfer_syntax = syntax
        self._reception = self._store.begin(syntax, sop_class, sop_instance, self._source)
        self._reception.write(bytes(head[offset:]))
        self._head = None


def store_part(store: InstanceStore, part: ReceivedPart, source: str, study_uid: str) -> Outcome:
    """Check, place and commit a received part (blocking: fsync and commit); ``study_uid`` may be empty.

    The same steps as a C-STORE (:meth:`InstanceStore.store`), with PS3.18's
    check that the instance belongs to the study named in the URL.
    """
    if part.outcome is not None:
        return part.outcome
    reception = part.reception
    assert reception is not None
    try:
        checked = store.check(reception, part.sop_instance_uid, part.sop_class_uid, source)
        if isinstance(checked, Outcome):
            return checked
        if study_uid and checked.study_uid != study_uid:
            return store.refuse(Outcome(STUDY_UID_MISMATCH, "Study Instance UID differs from the request's"),
                                source, "the instance's Study Instance UID differs from the one in the URL")
        placed = store.place(reception, checked, part.transfer_syntax, part.sop_class_uid, source)
        if isinstance(placed, Outcome):
            return placed
        return store.commit(placed)
    finally:
        reception.abandon()
