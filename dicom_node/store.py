"""The durable path of one received instance, shared by C-STORE (:mod:`dicom_node.scp`) and STOW-RS (:mod:`dicom_node.stow`).

Whatever the transport, an instance goes through the same steps: a
:class:`~dicom_node._receive.Reception` is begun (an incoming spool file behind
the File Meta we write, a :class:`~dicom_node._scan.StreamScanner` sized by the
SOP class's limit; refused at once below ``min_free_bytes``), fed the data set's
bytes as they arrive, then :meth:`InstanceStore.check` (complete, valid UIDs,
agreeing with what the request announced), :meth:`InstanceStore.place` (fsync,
rename, directory fsync) and :meth:`InstanceStore.commit` (the row, through a
group commit). Only then is the answer success (shared/DESIGN.md invariant 1).
Each failure maps to a named :class:`StoreStatus` with a comment free of
patient data; no file and no row remain after a failure.

:data:`INGEST_COUNTS` counts instances stored and failed per transport for the
metrics page (counters of this process, from zero at start).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Protocol

from dicom_node._dataset import file_meta
from dicom_node._receive import Reception, RefusedCommand
from dicom_node._scan import (
    DatasetHeader,
    DataSetTooLarge,
    InflationRefused,
    MalformedDataset,
    NestingTooDeep,
    StreamScanner,
)
from dicom_node._transport import printable
from dicom_node.errors import DuplicateInstance, NodeError
from dicom_node.limits import DataSetLimits
from dicom_node.spool import NotDurable, Spool
from engines.files import fsync_dir
from dicom_node.uids import is_valid_uid

__all__ = [
    "INGEST_COUNTS", "IngestCounts", "InstanceRecord", "InstanceSink", "InstanceStore", "Outcome", "Placed",
    "StoreStatus",
]

logger = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """C-STORE response statuses and STOW-RS Failure Reasons (PS3.4 Table B.2-1, PS3.18 10.5.3; 0xC001-0xC003 are ours)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  #: Refused: Out of Resources -- could not make the instance durable
    DATASET_MISMATCH = 0xA900  #: Error: Data Set does not match SOP Class
    CANNOT_UNDERSTAND = 0xC000  #: Error: Cannot understand -- truncated or malformed data set
    INVALID_UID = 0xC001  #: Cannot understand: Study/Series/SOP Instance UID missing or invalid
    UID_MISMATCH = 0xC002  #: Cannot understand: data set SOP Instance UID differs from the request's
    UID_CONFLICT = 0xC003  #: Cannot understand: SOP Instance UID already stored under another study or series
    #: Refused: SOP Class not supported (PS3.7 C.5.3; a STOW-RS Failure Reason, PS3.18 10.5.3)
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: Cannot understand: Referenced Transfer Syntax not supported (a STOW-RS Failure Reason, PS3.18 10.5.3)
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


@dataclass(frozen=True)
class InstanceRecord:
    """One durable instance, as handed to the :class:`InstanceSink` (no patient data)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    modality: str
    series_description: str
    transfer_syntax: str
    path: Path
    size: int
    calling_ae: str
    received_at: float
    #: the scanned top-level header (:func:`dicom_node.header.read_header_blob` reads it), so that nobody
    #: parses or inflates the file again to route it
    header: bytes = b""
    header_syntax: str = ""


class InstanceSink(Protocol):
    """Receives records of durable instances; commit them all in one transaction before returning.

    The same SOP Instance UID committed twice under the same study and series must be
    stored once and not raise; under another study or series it raises
    :class:`~dicom_node.errors.DuplicateInstance` (and commits nothing for it).
    """

    def commit(self, records: Sequence[InstanceRecord]) -> None: ...


@dataclass
class _Pending:
    record: InstanceRecord
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    done: bool = False
    error: BaseException | None = None
    synced: bool = False


class _GroupCommit:
    """Leader/follower group commit: one thread commits the rows of every waiting handler.

    A lone association commits its own record at once; concurrent associations
    share one database transaction (one WAL sync). Each handler makes its own file
    durable first (fsync, rename, directory fsync; ``synced=True``): concurrent
    fsyncs share the file system's journal commits, so doing them in the handlers
    keeps them off this serial path. A record committed with ``synced=False`` has
    its directory fsync'd here before its row is committed.
    """

    def __init__(self, sink: InstanceSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._leading = False

    def commit(self, record: InstanceRecord, synced: bool = False) -> None:
        item = _Pending(record, synced=synced)
        with self._lock:
            self._pending.append(item)
            lead = not self._leading
            self._leading = True
        if not lead:
            item.wake.wait()
        if not item.done:  # we lead: our own item is in the pending list
            with self._lock:
                batch, self._pending = self._pending, []
            self._flush(batch)
            with self._lock:
                if self._pending:
                    successor = self._pending[0]
                    successor.lead = True
                    successor.wake.set()
                else:
                    self._leading = False
        if item.error is not None:
            raise item.error

    def _flush(self, batch: list[_Pending]) -> None:
        try:
            for directory in {item.record.path.parent for item in batch if not item.synced}:
                fsync_dir(directory)
        except OSError as exc:  # the renames are not known to be durable: commit nothing
            for item in batch:
                item.error = exc
                item.done = True
                item.wake.set()
            return
        try:
            self._sink.commit([item.record for item in batch])
        except Exception as exc:  # noqa: BLE001 - reported to each waiting handler
            if len(batch) == 1:
                batch[0].error = exc
            else:  # isolate the failing record: commit the others one by one
                for item in batch:
                    try:
                        self._sink.commit([item.record])
                    except Exception as single:  # noqa: BLE001
                        item.error = single
        for item in batch:
            item.done = True
            item.wake.set()



class IngestCounts:
    """Instances stored and failed per transport (``dimse``, ``stowrs``) since this process started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, transport: str, outcome: str) -> None:
        with self._lock:
            self._counts[(transport, outcome)] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        """``{(transport, "stored" | "failed"): count}``."""
        with self._lock:
            return dict(self._counts)


#: the process's ingest counters (read by the appliance's metrics)
INGEST_COUNTS = IngestCounts()


@dataclass(frozen=True)
class Outcome:
    """The answer for one instance: a status and a comment naming no patient data."""

    status: StoreStatus
    comment: str = ""

    @property
    def ok(self) -> bool:
        return self.status == StoreStatus.SUCCESS


@dataclass(frozen=True)
class Placed:
    """An instance durable under its final name whose row is not committed yet."""

    record: InstanceRecord
    created: bool  #: False when the file existed already (a re-send)


class InstanceStore:
    """The spool, the sink and the data-set limits: one received instance from first byte to committed row.

    ``transport`` labels the counters (:data:`INGEST_COUNTS`) and the log lines.
    """

    def __init__(self, spool: Spool, sink: InstanceSink, dataset_limits: DataSetLimits = DataSetLimits(),
                 transport: str = "dimse") -> None:
        self.spool = spool
        self.dataset_limits = dataset_limits
        self.transport = transport
        self._commit = _GroupCommit(sink)

    def begin(self, syntax: str, sop_class: str, sop_instance: str, source: str) -> Reception:
        """A reception whose incoming file starts with our File Meta; failed already when the spool refuses."""
        limits = self.dataset_limits
        scanner = StreamScanner(
            syntax, max_bytes=limits.for_sop_class(sop_class), max_inflated=limits.max_inflated_bytes,
            max_ratio=limits.max_inflate_ratio, max_depth=limits.max_depth,
        )
        try:
            incoming = self.spool.incoming()
            incoming.write(file_meta(sop_class, sop_instance, syntax, source))
        except NotDurable as exc:
            return Reception(None, None, exc)
        return Reception(incoming, scanner)

    def store(self, reception: Reception, syntax: str, sop_instance: str, sop_class: str, source: str) -> Outcome:
        """check, place and commit one complete reception (the C-STORE path); the file is gone on failure."""
        try:
            checked = self.check(reception, sop_instance, sop_class, source)
            if isinstance(checked, Outcome):
                return checked
            placed = self.place(reception, checked, syntax, sop_class, source)
            if isinstance(placed, Outcome):
                return placed
            return self.commit(placed)
        finally:
            reception.abandon()

    def check(self, reception: Reception, sop_instance: str, sop_class: str, source: str) -> DatasetHeader | Outcome:
        """The scanned header of a complete data set, or the failure when it is not one we can store."""
        try:
            header = reception.finish()
        except NodeError as exc:
            return self._counted(_refusal(exc, self._origin(source)))
        refused = _check_header(header, sop_instance, sop_class, self._origin(source))
        return self._counted(refused) if refused is not None else header

    def refuse(self, outcome: Outcome, source: str, reason: str) -> Outcome:
        """Count and log a failure decided by the transport (e.g. a STOW-RS study UID mismatch)."""
        logger.warning("%s refused: %s", self._origin(source), reason)
        return self._counted(outcome)

    def place(self, reception: Reception, header: DatasetHeader, syntax: str, sop_class: str,
              source: str) -> Placed | Outcome:
        """fsync and rename the incoming file under its final name (PS3.4 B.2.3: durable before success)."""
        assert reception.incoming is not None
        sop_instance = header.sop_instance_uid
        try:
            stored = self.spool.place(reception.incoming, header.study_uid, header.series_uid, sop_instance)
        except NotDurable as exc:
            logger.error("%s refused, out of resources: %s", self._origin(source), exc)
            return self._counted(Outcome(StoreStatus.OUT_OF_RESOURCES, "instance could not be made durable"))
        record = InstanceRecord(
            sop_instance_uid=sop_instance, sop_class_uid=sop_class, study_uid=header.study_uid,
            series_uid=header.series_uid, modality=header.modality, series_description=header.series_description,
            transfer_syntax=syntax, path=stored.path, size=stored.size, calling_ae=source, received_at=time.time(),
            header=header.blob, header_syntax=header.blob_syntax,
        )
        return Placed(record, stored.created)

    def commit(self, placed: Placed) -> Outcome:
        """Commit the row of a placed instance (group commit); on failure its new file is removed."""
        origin = self._origin(placed.record.calling_ae)
        try:
            self._commit.commit(placed.record, synced=True)
        except DuplicateInstance:
            logger.warning("%s refused: SOP Instance UID stored already under another study or series", origin)
            if placed.created:
                self.spool.discard(placed.record.path)
            return self._counted(Outcome(StoreStatus.UID_CONFLICT, "SOP Instance UID stored under another study/series"))
        except Exception as exc:  # noqa: BLE001 - any sink failure means the row is not durable
            logger.error("%s refused: recording the instance failed: %s", origin, exc)
            if placed.created:
                self.spool.discard(placed.record.path)
            return self._counted(Outcome(StoreStatus.OUT_OF_RESOURCES, "instance could not be recorded"))
        return self._counted(Outcome(StoreStatus.SUCCESS))

    def _origin(self, source: str) -> str:
        return f"{'C-STORE' if self.transport == 'dimse' else 'STOW-RS'} from {printable(source, 16)}"

    def _counted(self, outcome: Outcome) -> Outcome:
        INGEST_COUNTS.add(self.transport, "stored" if outcome.ok else "failed")
        return outcome


def _refusal(exc: NodeError, origin: str) -> Outcome:
    """The failure for a data set the node would not or could not take (PS3.4 B.2.3)."""
    if isinstance(exc, RefusedCommand):
        logger.warning("%s refused: %s", origin, exc)
        return Outcome(StoreStatus(exc.status), str(exc))
    if isinstance(exc, (DataSetTooLarge, InflationRefused)):
        logger.warning("%s refused: %s", origin, exc)
        return Outcome(StoreStatus.OUT_OF_RESOURCES, str(exc))
    if isinstance(exc, NestingTooDeep):
        logger.warning("%s refused: %s", origin, exc)
        return Outcome(StoreStatus.CANNOT_UNDERSTAND, str(exc))
    if isinstance(exc, MalformedDataset):
        logger.warning("%s refused: %s", origin, exc)
        return Outcome(StoreStatus.CANNOT_UNDERSTAND, "data set truncated or malformed")
    logger.error("%s refused, out of resources: %s", origin, exc)
    return Outcome(StoreStatus.OUT_OF_RESOURCES, "instance could not be made durable")


def _check_header(header: DatasetHeader, affected_sop: str, affected_class: str, origin: str) -> Outcome | None:
    """The failure when the scanned header and the request disagree or lack valid UIDs, else None."""
    for what, value in (("Study Instance UID", header.study_uid), ("Series Instance UID", header.series_uid),
                        ("SOP Instance UID", header.sop_instance_uid)):
        if not is_valid_uid(value):
            logger.warning("%s refused: %s missing or invalid", origin, what)
            return Outcome(StoreStatus.INVALID_UID, f"{what} missing or invalid")
    if header.sop_instance_uid != affected_sop:
        logger.warning("%s refused: data set SOP Instance UID differs from the request's", origin)
        return Outcome(StoreStatus.UID_MISMATCH, "SOP Instance UID differs from Affected SOP Instance UID")
    if header.sop_class_uid and header.sop_class_uid != affected_class:
        logger.warning("%s refused: SOP Class UID %s differs from the request's %s",
                       origin, printable(header.sop_class_uid), affected_class)
        return Outcome(StoreStatus.DATASET_MISMATCH, "SOP Class UID differs from Affected SOP Class UID")
    return None
