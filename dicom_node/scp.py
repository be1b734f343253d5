"""The storage SCP: C-ECHO and C-STORE into the durable spool (PS3.4 Annex A and B).

A C-STORE is answered Success only after its file is durable (temporary name,
fsync, rename, directory fsync) and the :class:`InstanceSink` has committed its
record (shared/DESIGN.md invariant 1). The received data set bytes stream to
the spool's incoming file as their P-DATA arrives (:mod:`dicom_node._receive`),
behind a File Meta header we write ourselves, scanned on the way
(:mod:`dicom_node._scan`); they are never held whole, decoded or re-encoded.
Connections, PDUs and data sets are bounded by :mod:`dicom_node.limits`. Failures map to named statuses: the node could
not make the instance durable -> :attr:`StoreStatus.OUT_OF_RESOURCES`; the data
set is larger than its SOP class's limit, or inflates past the inflation
limits -> Out of Resources too, with the reason in the Error Comment; the data
set is truncated, nested too deep or lacks valid UIDs -> the ``0xC000`` "cannot
understand" range; its SOP Instance UID is stored already under another study
or series -> :attr:`StoreStatus.UID_CONFLICT`. Either way no file and no row
remain (docs/conformance.md lists every status).

Peers are checked when they ask to associate (:mod:`dicom_node.access`); the
node never imports ``appliance``: whoever runs it passes an :class:`InstanceSink`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt

from dicom_node._acceptor import SUPPORTED, EventDrivenRequestHandler
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
from dicom_node._storage_classes import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from dicom_node._transport import escape_pynetdicom_logs, hardened_server_class, printable
from dicom_node.access import AccessPolicy, Rejection
from dicom_node.errors import DuplicateInstance, NodeError
from dicom_node.limits import DataSetLimits, NetworkLimits
from dicom_node.spool import NotDurable, Spool
from engines.files import fsync_dir
from dicom_node.uids import is_valid_uid

__all__ = ["InstanceRecord", "InstanceSink", "StorageSCP", "StoreStatus"]

logger = logging.getLogger(__name__)

# Identifiers may carry patient data: keep them out of pynetdicom's logs (invariant 4).
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# pynetdicom's "standard" handlers format a debug dump of every DIMSE message and PDU even when
# debug logging is off; that costs time per C-STORE, so only its plain log lines remain.
_config.LOG_HANDLER_LEVEL = "none"
# The event-driven acceptor streams C-STORE data sets itself (dicom_node._receive); with another
# pynetdicom series, pynetdicom's own acceptor writes them to a temporary file, never to memory.
_config.STORE_RECV_CHUNKED_DATASET = not SUPPORTED
# pynetdicom logs values it decoded from a peer's PDUs (AE titles) raw: one line each, escaped.
escape_pynetdicom_logs()
#: a data set held in memory or in pynetdicom's temporary file is scanned and copied in blocks of this size
_COPY_BLOCK = 1 << 20


class StoreStatus(IntEnum):
    """C-STORE response statuses (PS3.4 Table B.2-1; 0xC001-0xC003 are ours in the C000-CFFF range)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  #: Refused: Out of Resources -- could not make the instance durable
    DATASET_MISMATCH = 0xA900  #: Error: Data Set does not match SOP Class
    CANNOT_UNDERSTAND = 0xC000  #: Error: Cannot understand -- truncated or malformed data set
    INVALID_UID = 0xC001  #: Cannot understand: Study/Series/SOP Instance UID missing or invalid
    UID_MISMATCH = 0xC002  #: Cannot understand: data set SOP Instance UID differs from the request's
    UID_CONFLICT = 0xC003  #: Cannot understand: SOP Instance UID already stored under another study or series


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


#: How long pynetdicom's DUL thread sleeps between polls when idle (its default is 1 ms). The
#: event-driven acceptor (:mod:`dicom_node._acceptor`) waits on its socket instead; this only
#: remains for pynetdicom's own loop (another pynetdicom series) and its stop_dul() join.
DUL_POLL_SECONDS = 0.0002


def _tune(assoc: Any) -> None:
    """Lower per-message latency of an accepted association: TCP_NODELAY and a shorter DUL poll."""
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass
    assoc.dul._run_loop_delay = DUL_POLL_SECONDS


def _reject(assoc: Any, rejection: Rejection) -> None:
    """Send A-ASSOCIATE-RJ and wait until it is on the wire, as pynetdicom does for its own checks."""
    assoc.acse.send_reject(*rejection.reject_args)
    assoc.kill()


def _failure(status: StoreStatus, comment: str) -> Dataset:
    """A status data set with an Error Comment (PS3.7 C.4.2.1.4; LO, at most 64 characters, no PHI)."""
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment[:64]
    return ds


class StorageSCP:
    """The node's storage SCP, a service component (``name``, ``start()``, ``stop()``).

    ``sop_classes`` defaults to every class in :data:`STORAGE_SOP_CLASSES`; each is
    accepted in every syntax of :data:`TRANSFER_SYNTAXES`. ``port=0`` picks a free
    port; :attr:`port` tells which after :meth:`start`.
    """

    name = "dicom-node"

    def __init__(
        self,
        ae_title: str,
        host: str,
        port: int,
        spool: Spool,
        sink: InstanceSink,
        policy: AccessPolicy,
        ssl_context: ssl.SSLContext | None = None,
        limits: NetworkLimits = NetworkLimits(),
        dataset_limits: DataSetLimits = DataSetLimits(),
        sop_classes: Sequence[str] = STORAGE_SOP_CLASSES,
    ) -> None:
        self.ae_title = ae_title.strip()
        self.host = host
        self._port = port
        self.spool = spool
        self.policy = policy
        self._commit = _GroupCommit(sink)
        self._ssl_context = ssl_context
        self.limits = limits
        self.dataset_limits = dataset_limits
        self._sop_classes = tuple(sop_classes)
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port the SCP listens on (the bound port once started)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.limits.max_pdu
        ae.maximum_associations = self.limits.max_connections
        ae.acse_timeout = self.limits.artim_timeout
        ae.network_timeout = self.limits.idle_timeout
        ae.add_supported_context(VERIFICATION)
        for sop_class in self._sop_classes:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    def start(self) -> None:
        """Remove temporaries of an interrupted run, then listen (returns at once)."""
        with self._lock:
            if self._server is not None:
                return
            self.spool.remove_temporaries()
            ae = self._make_ae()
            handlers: list[Any] = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store)]
            # AE.start_server(block=False), with pynetdicom's hook for a custom request handler
            # TLS is wrapped by the connection's thread (dicom_node._transport), not pynetdicom's accept
            server = ae.make_server(
                (self.host, self._port), ssl_context=None, evt_handlers=handlers,
                server_class=hardened_server_class(self.limits, self._ssl_context, self),
                request_handler=EventDrivenRequestHandler,
            )
            thread = threading.Thread(target=server.serve_forever, name=f"{self.name}-acceptor", daemon=True)
            thread.start()
            ae._servers.append(server)  # as start_server does; the server's shutdown() removes it
            self._server = server
            logger.info("storage SCP %s listening on %s:%d%s", self.ae_title, self.host, self.port,
                        " (TLS)" if self._ssl_context else "")

    def stop(self) -> None:
        """Stop listening and end open associations; safe to call twice."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        for assoc in list(server.active_associations):
            assoc.abort()
        server.shutdown()
        server.server_close()
        logger.info("storage SCP %s stopped", self.ae_title)

    def _on_requested(self, event: evt.Event) -> None:
        """Refuse peers that are not listed, or that call another AE title (PS3.8 9.3.4).

        Fails closed: pynetdicom swallows handler exceptions and would go on to
        accept, so any error here rejects the association.
        """
        assoc = event.assoc
        try:
            primitive: Any = assoc.requestor.primitive
            calling = str(primitive.calling_ae_title).strip()
            called = str(primitive.called_ae_title).strip()
            address = str(assoc.requestor.address)
            rejection = self.policy.check(calling, called, address)
        except Exception:
            logger.exception("access check failed; refusing the association")
            _reject(assoc, Rejection.CALLING_AE_NOT_RECOGNIZED)
            return
        if rejection is not None:
            logger.warning("refused association from %s: calling AE '%s', called AE '%s' (%s)",
                           address, printable(calling, 16), printable(called, 16),
                           rejection.name.lower().replace("_", " "))
            _reject(assoc, rejection)
            return
        _tune(assoc)

    def begin_reception(self, assoc: Any, context_id: int, command: Any) -> Reception:
        """A reception for a C-STORE-RQ whose data set is about to stream in (:mod:`dicom_node._receive`).

        Raises :class:`RefusedCommand` when the command set cannot be served; the
        data set is then read and dropped and the status sent.
        """
        sop_instance = str(command.get("AffectedSOPInstanceUID", "") or "").strip("\0 ")
        sop_class = str(command.get("AffectedSOPClassUID", "") or "").strip("\0 ")
        if not is_valid_uid(sop_instance) or not is_valid_uid(sop_class):
            raise RefusedCommand("Affected SOP Class or Instance UID in the command set is not a valid UID",
                                 int(StoreStatus.INVALID_UID))
        try:
            syntax = str(assoc._accepted_cx[context_id].transfer_syntax[0])
        except (KeyError, IndexError, AttributeError):
            raise RefusedCommand(f"presentation context {context_id} was not accepted",
                                 int(StoreStatus.CANNOT_UNDERSTAND)) from None
        return self._reception(syntax, sop_class, sop_instance, str(assoc.requestor.ae_title).strip())

    def _reception(self, syntax: str, sop_class: str, sop_instance: str, calling_ae: str) -> Reception:
        limits = self.dataset_limits
        scanner = StreamScanner(
            syntax, max_bytes=limits.for_sop_class(sop_class), max_inflated=limits.max_inflated_bytes,
            max_ratio=limits.max_inflate_ratio, max_depth=limits.max_depth,
        )
        try:
            incoming = self.spool.incoming()
            incoming.write(file_meta(sop_class, sop_instance, syntax, calling_ae))
        except NotDurable as exc:
            return Reception(None, None, exc)
        return Reception(incoming, scanner)

    def _on_store(self, event: evt.Event) -> int | Dataset:
        """Make one C-STORE durable and answer it (PS3.4 B.2.3)."""
        request: Any = event.request
        transfer_syntax = str(event.context.transfer_syntax)
        affected_sop = str(request.AffectedSOPInstanceUID or "").strip()
        affected_class = str(request.AffectedSOPClassUID or "").strip()
        calling_ae = printable(str(event.assoc.requestor.ae_title).strip(), 16)
        reception: Reception | None = getattr(request, "_reception", None)
        if reception is None:  # pynetdicom's own acceptor: its temporary file, or the data set in memory
            if not (is_valid_uid(affected_sop) and is_valid_uid(affected_class)):
                return _failure(StoreStatus.INVALID_UID, "Affected SOP Class or Instance UID invalid")
            reception = self._reception(transfer_syntax, affected_class, affected_sop, calling_ae)
            _copy_into(reception, request)
        try:
            return self._store(reception, transfer_syntax, affected_sop, affected_class, calling_ae)
        finally:
            reception.abandon()  # nothing left once placed; removes the file of a refused one

    def _store(
        self, reception: Reception, transfer_syntax: str, affected_sop: str, affected_class: str, calling_ae: str
    ) -> int | Dataset:
        try:
            header = reception.finish()
        except NodeError as exc:
            return _refusal(exc, calling_ae)
        refused = _check_header(header, affected_sop, affected_class, calling_ae)
        if refused is not None:
            return refused
        assert reception.incoming is not None
        try:
            stored = self.spool.place(reception.incoming, header.study_uid, header.series_uid, affected_sop)
        except NotDurable as exc:
            logger.error("C-STORE from %s refused, out of resources: %s", calling_ae, exc)
            return _failure(StoreStatus.OUT_OF_RESOURCES, "instance could not be made durable")
        record = InstanceRecord(
            sop_instance_uid=affected_sop,
            sop_class_uid=affected_class,
            study_uid=header.study_uid,
            series_uid=header.series_uid,
            modality=header.modality,
            series_description=header.series_description,
            transfer_syntax=transfer_syntax,
            path=stored.path,
            size=stored.size,
            calling_ae=calling_ae,
            received_at=time.time(),
            header=header.blob,
            header_syntax=header.blob_syntax,
        )
        try:
            self._commit.commit(record, synced=True)
        except DuplicateInstance:
            logger.warning("C-STORE from %s refused: SOP Instance UID stored already under another study or series",
                           calling_ae)
            if stored.created:
                self.spool.discard(stored.path)
            return _failure(StoreStatus.UID_CONFLICT, "SOP Instance UID stored under another study/series")
        except Exception as exc:  # noqa: BLE001 - any sink failure means the row is not durable
            logger.error("C-STORE from %s refused: recording the instance failed: %s", calling_ae, exc)
            if stored.created:
                self.spool.discard(stored.path)
            return _failure(StoreStatus.OUT_OF_RESOURCES, "instance could not be recorded")
        return int(StoreStatus.SUCCESS)


def _copy_into(reception: Reception, request: Any) -> None:
    """Feed a data set pynetdicom received (temporary file or ``BytesIO``) to ``reception`` in blocks."""
    located = getattr(request, "_dataset_path", None)
    if located is not None:
        from pydicom.filereader import read_preamble
        from pydicom.filereader import _read_file_meta_info

        with open(located if not isinstance(located, tuple) else located[0], "rb") as handle:
            read_preamble(handle, False)
            _read_file_meta_info(handle)
            while block := handle.read(_COPY_BLOCK):
                reception.write(block)
        return
    with request.DataSet.getbuffer() as view:
        for start in range(0, len(view), _COPY_BLOCK):
            reception.write(view[start : start + _COPY_BLOCK])


def _refusal(exc: NodeError, calling_ae: str) -> Dataset:
    """The failure status for a data set the node would not or could not take (PS3.4 B.2.3)."""
    if isinstance(exc, RefusedCommand):
        status = StoreStatus(exc.status)
        logger.warning("C-STORE from %s refused: %s", calling_ae, exc)
        return _failure(status, str(exc))
    if isinstance(exc, (DataSetTooLarge, InflationRefused)):
        logger.warning("C-STORE from %s refused: %s", calling_ae, exc)
        return _failure(StoreStatus.OUT_OF_RESOURCES, str(exc))
    if isinstance(exc, NestingTooDeep):
        logger.warning("C-STORE from %s refused: %s", calling_ae, exc)
        return _failure(StoreStatus.CANNOT_UNDERSTAND, str(exc))
    if isinstance(exc, MalformedDataset):
        logger.warning("C-STORE from %s refused: %s", calling_ae, exc)
        return _failure(StoreStatus.CANNOT_UNDERSTAND, "data set truncated or malformed")
    logger.error("C-STORE from %s refused, out of resources: %s", calling_ae, exc)
    return _failure(StoreStatus.OUT_OF_RESOURCES, "instance could not be made durable")


def _check_header(header: DatasetHeader, affected_sop: str, affected_class: str, calling_ae: str) -> Dataset | None:
    """The failure status when the scanned header and the request disagree or lack valid UIDs, else None."""
    for what, value in (("Study Instance UID", header.study_uid), ("Series Instance UID", header.series_uid),
                        ("SOP Instance UID", header.sop_instance_uid)):
        if not is_valid_uid(value):
            logger.warning("C-STORE from %s refused: %s missing or invalid", calling_ae, what)
            return _failure(StoreStatus.INVALID_UID, f"{what} missing or invalid")
    if header.sop_instance_uid != affected_sop:
        logger.warning("C-STORE from %s refused: data set SOP Instance UID differs from the request's", calling_ae)
        return _failure(StoreStatus.UID_MISMATCH, "SOP Instance UID differs from Affected SOP Instance UID")
    if header.sop_class_uid and header.sop_class_uid != affected_class:
        logger.warning("C-STORE from %s refused: SOP Class UID %s differs from the request's %s",
                       calling_ae, printable(header.sop_class_uid), affected_class)
        return _failure(StoreStatus.DATASET_MISMATCH, "SOP Class UID differs from Affected SOP Class UID")
    return None
