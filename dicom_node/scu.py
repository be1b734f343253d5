"""The storage SCU that delivers results to PACS: C-ECHO and C-STORE (PS3.4 Annex A and B).

One association carries a whole batch of files to one destination. Every
outcome is either success or a :class:`~dicom_node.errors.DeliveryFailed`
whose message says why: association refused, rejected or aborted, a timeout,
or a non-success status with its hex code and meaning (PS3.4 B.2.3).

Why this SCU is fast: a plain pynetdicom SCU waits about 47 ms per C-STORE over
loopback, because it writes the command and the data set as two small PDUs on a
socket with Nagle's algorithm on, and the peer's delayed ACK (40 ms on Linux)
holds the second. ``TCP_NODELAY``, set from the documented ``EVT_CONN_OPEN``
hook, removes that floor. The rest is pynetdicom's per-message work, which
:mod:`dicom_node.speedups` removes for a file whose transfer syntax the peer
accepted (its P-DATA writer; figures there). With the speed-ups off, such a
file goes through ``send_c_store`` with pynetdicom's documented chunked send
(``_config.STORE_SEND_CHUNKED_DATASET``): read in fragments, never whole. Only
a file the peer wants in another uncompressed syntax is decoded, and only up to
:data:`CONVERT_LIMIT` bytes.

``bench/deliver.py`` measures this against dcmtk ``storescu``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS, Status, code_to_category

from dicom_node._c_store import UNCOMPRESSED, FileInfo, UnsendableFile, contexts_for, read_info
from dicom_node._storage_classes import VERIFICATION  # Verification SOP Class (PS3.4 A.4)
from dicom_node.errors import DeliveryFailed, SenderStopped
from dicom_node.speedups import PDataWriter

__all__ = ["Destination", "StorageSCU", "StoreResult", "StoreSession", "UnsendableFile", "describe_status"]

logger = logging.getLogger(__name__)

# A file goes out as stored, read in fragments (pynetdicom's documented hook; ``send_c_store`` given a path).
_config.STORE_SEND_CHUNKED_DATASET = True
#: a file is sent as stored, in fragments read as they go; only one whose transfer syntax the peer did not
#: accept is decoded to be converted, and only up to this size (results are small; instances are not)
CONVERT_LIMIT = 64 << 20


def describe_status(code: int) -> str:
    """``0xA700 Failure: Refused: Out of Resources`` for a C-STORE status (PS3.4 B.2.3, PS3.7 C)."""
    category = code_to_category(code)
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (category, ""))[1] or "unknown status"
    if code == Status.SUCCESS:
        meaning = "Success"
    return f"0x{code:04X} {category}: {meaning}"


@dataclass(frozen=True)
class Destination:
    """A storage SCP to deliver to; ``ssl_context`` turns on TLS (PS3.15 B.1)."""

    kind: ClassVar[str] = "dimse"
    name: str
    ae_title: str
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None  #: name checked against the certificate; default ``host``

    def __str__(self) -> str:
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port}{' TLS' if self.ssl_context else ''})"


@dataclass(frozen=True)
class StoreResult:
    """What happened to one file: ``error`` is None on success (warnings count as success)."""

    path: Path
    sop_instance_uid: str
    status: int | None = None
    error: DeliveryFailed | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: turn Nagle off so small PDUs are not held for a delayed ACK."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class StoreSession:
    """One established association to a destination; send files with :meth:`store`.

    Not thread-safe: one session belongs to one sender thread; ``abort()`` may be called from another.
    """

    def __init__(self, assoc: Association, destination: Destination, timeout: float) -> None:
        self._assoc = assoc
        self.destination = destination
        self._timeout = timeout
        self._message_id = 0
        self._broken: str | None = None
        cxs = assoc.accepted_contexts
        self._exact = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cx for cx in cxs}
        self._by_class: dict[str, list[PresentationContext]] = {}
        for cx in cxs:
            self._by_class.setdefault(str(cx.abstract_syntax), []).append(cx)
        self._writer = PDataWriter(assoc, destination, timeout, self._fail) if PDataWriter.fits(assoc) else None

    @property
    def usable(self) -> bool:
        return self._broken is None and self._assoc.is_established

    def store(self, path: Path | str, info: FileInfo | None = None) -> int:
        """C-STORE one file; return its (success or warning) status or raise DeliveryFailed."""
        info = info or read_info(Path(path))
        if self._broken is not None:
            raise DeliveryFailed(f"{self.destination}: association no longer usable: {self._broken}")
        if not self._assoc.is_established:
            raise self._fail(f"association to {self.destination} ended before the C-STORE")
        cx = self._exact.get((info.sop_class_uid, info.transfer_syntax))
        if cx is not None and self._writer is not None:
            rsp = self._writer.store(info, cx, self._next_id())
        elif cx is not None:
            rsp = self._send_c_store(info.path, info)
        else:
            rsp = self._store_converted(info)
        status = int(getattr(rsp, "Status", -1))
        if code_to_category(status) in (STATUS_SUCCESS, STATUS_WARNING):
            if status != Status.SUCCESS:
                logger.info("%s answered %s for %s", self.destination, describe_status(status), info.sop_instance_uid)
            return status
        comment = getattr(rsp, "ErrorComment", None)
        detail = f" ({comment})" if comment else ""
        raise DeliveryFailed(f"{self.destination} answered C-STORE with {describe_status(status)}{detail}")

    def _next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _fail(self, reason: str) -> DeliveryFailed:
        self._broken = reason
        return DeliveryFailed(reason)

    def _store_converted(self, info: FileInfo) -> Any:
        """pynetdicom's ``send_c_store`` with the decoded data set, for a transfer syntax it must convert."""
        if info.transfer_syntax not in UNCOMPRESSED or info.sop_class_uid not in self._by_class:
            raise DeliveryFailed(
                f"{self.destination} accepted no presentation context for SOP class {info.sop_class_uid} "
                f"in transfer syntax {UID(info.transfer_syntax).name}"
            )
        try:
            size = info.path.stat().st_size
        except OSError as exc:
            raise UnsendableFile(f"result file {str(info.path)!r} cannot be read: {exc.strerror}") from None
        if size > CONVERT_LIMIT:
            raise DeliveryFailed(
                f"{self.destination} accepted SOP class {info.sop_class_uid} only in another transfer syntax than "
                f"{UID(info.transfer_syntax).name}; converting a file of {size} bytes would hold it in memory "
                f"(limit {CONVERT_LIMIT}): let the destination accept the file's own transfer syntax"
            )
        try:
            dataset = dcmread(info.path)
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            raise UnsendableFile(f"result file {str(info.path)!r} cannot be decoded: {exc}") from None
        return self._send_c_store(dataset, info)

    def _send_c_store(self, source: Dataset | Path, info: FileInfo) -> Any:
        """pynetdicom's ``send_c_store``: a decoded data set, or a file sent as stored in fragments."""
        try:
            rsp = self._assoc.send_c_store(source, msg_id=self._next_id())
        except (ValueError, AttributeError, RuntimeError) as exc:
            raise DeliveryFailed(f"{self.destination}: cannot send {info.sop_instance_uid}: {exc}") from None
        if not rsp or "Status" not in rsp:
            if self._assoc.is_aborted or not self._assoc.is_established:
                raise self._fail(f"association to {self.destination} was aborted or timed out during the C-STORE")
            raise self._fail(f"{self.destination} sent an invalid C-STORE response")
        return rsp

    def close(self) -> None:
        """Release the association (PS3.8 7.2); abort when the peer does not answer."""
        if self._writer is not None:
            self._writer.resume_reactor()
        if self._assoc.is_established:
            self._assoc.release()
        if self._assoc.is_established:
            self._assoc.abort()

    def abort(self) -> None:
        """Abort from any thread (used when the sender stops)."""
        self._broken = self._broken or "aborted locally"
        if self._writer is not None:
            self._writer.resume_reactor()
        if self._assoc.is_established:
            self._assoc.abort()

    def __enter__(self) -> StoreSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class StorageSCU:
    """Associates with destinations as ``ae_title``; every network wait is bounded by ``timeout``."""

    def __init__(self, ae_title: str = "APPLIANCE", timeout: float = 30.0) -> None:
        self.ae_title = ae_title
        self.timeout = timeout
        self._live: set[Association] = set()
        self._live_lock = threading.Lock()

    def _ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        return ae

    def _associate(self, destination: Destination, contexts: Sequence[PresentationContext]) -> Association:
        ae = self._ae()
        ae.requested_contexts = list(contexts)
        tls_args = None
        if destination.ssl_context is not None:
            tls_args = (destination.ssl_context, destination.server_hostname or destination.host)
        connected = threading.Event()

        def opened(event: evt.Event) -> None:
            connected.set()
            with self._live_lock:
                self._live.add(event.assoc)
            _nodelay(event)

        started = time.monotonic()
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, opened)],
        )
        if assoc.is_established:
            PDataWriter.tune(assoc)
            return assoc
        self._forget(assoc)
        elapsed = time.monotonic() - started
        if not connected.is_set():
            if elapsed >= self.timeout * 0.9:
                raise DeliveryFailed(f"cannot connect to {destination}: timed out after {elapsed:.1f} s")
            tls = " or the TLS handshake failed (certificate not trusted?)" if destination.ssl_context else ""
            raise DeliveryFailed(f"cannot connect to {destination}: connection refused or unreachable{tls}")
        raise DeliveryFailed(self._why_not(assoc, destination, elapsed))

    def _why_not(self, assoc: Association, destination: Destination, elapsed: float) -> str:
        if assoc.is_rejected:
            rj = assoc.acceptor.primitive
            if rj is not None:
                return (
                    f"association rejected by {destination}: {rj.result_str} by {rj.source_str}, "
                    f"reason: {rj.reason_str}"
                )
            return f"association rejected by {destination}"
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            offered = "; ".join(
                f"{UID(str(cx.abstract_syntax)).name} in {', '.join(UID(str(ts)).name for ts in cx.transfer_syntax)}"
                for cx in assoc.rejected_contexts
            )
            return f"{destination} accepted none of the proposed presentation contexts ({offered})"
        if assoc.is_aborted:
            return f"association aborted by {destination} during negotiation"
        if elapsed >= self.timeout * 0.9:
            return f"association with {destination} timed out after {elapsed:.1f} s without an answer"
        return f"connection to {destination} closed during association negotiation"

    def _forget(self, assoc: Association) -> None:
        with self._live_lock:
            self._live.discard(assoc)

    def abort_all(self) -> None:
        """Abort every association of this SCU, also those still negotiating (from any thread)."""
        with self._live_lock:
            live = list(self._live)
        for assoc in live:
            try:
                if assoc.is_established:
                    assoc.abort()
                else:  # closing the transport ends a negotiation at once (PS3.8 9.2, AA-4)
                    sock = assoc.dul.socket
                    if sock is not None and sock.socket is not None:
                        sock.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                logger.debug("association already closed while aborting", exc_info=True)

    def echo(self, destination: Destination) -> float:
        """C-ECHO (PS3.7 9.3.5); return the round trip in seconds or raise DeliveryFailed."""
        started = time.monotonic()
        assoc = self._associate(destination, [build_context(VERIFICATION)])
        try:
            rsp = assoc.send_c_echo()
            status = int(rsp.Status) if rsp and "Status" in rsp else None
        finally:
            if assoc.is_established:
                assoc.release()
            self._forget(assoc)
        if status is None:
            raise DeliveryFailed(f"{destination} sent no C-ECHO response within {self.timeout:g} s")
        if status != Status.SUCCESS:
            raise DeliveryFailed(f"{destination} answered C-ECHO with 0x{status:04X}")
        return time.monotonic() - started

    @contextmanager
    def session(self, destination: Destination, paths: Iterable[Path | str]) -> Iterator[StoreSession]:
        """An association with contexts for every file in ``paths``, released on exit."""
        infos = [read_info(Path(p)) for p in paths]
        assoc = self._associate(destination, contexts_for(infos))
        try:
            with StoreSession(assoc, destination, self.timeout) as sess:
                yield sess
        finally:
            self._forget(assoc)

    def send_files(
        self,
        destination: Destination,
        paths: Sequence[Path | str],
        stop: threading.Event | None = None,
    ) -> list[StoreResult]:
        """C-STORE every file over one association; one :class:`StoreResult` per path, in order.

        A file that cannot be read fails alone; when the association cannot be made
        or breaks, the files not yet answered fail with that reason. ``stop`` ends the
        batch early: the rest fail with "sender stopped" (see :meth:`abort_all`).
        """
        results: dict[int, StoreResult] = {}
        infos: dict[int, FileInfo] = {}
        for index, path in enumerate(paths):
            try:
                infos[index] = read_info(Path(path))
            except UnsendableFile as exc:
                results[index] = StoreResult(Path(path), "", error=exc)
        if infos and stop is not None and stop.is_set():
            for index, info in infos.items():
                failure = SenderStopped("sender stopped before this file was sent")
                results[index] = StoreResult(info.path, info.sop_instance_uid, error=failure)
        elif infos:
            self._send_batch(destination, infos, results, stop)
        return [results[i] for i in range(len(paths))]

    def _send_batch(
        self,
        destination: Destination,
        infos: dict[int, FileInfo],
        results: dict[int, StoreResult],
        stop: threading.Event | None,
    ) -> None:
        try:
            assoc = self._associate(destination, contexts_for(infos.values()))
        except DeliveryFailed as exc:
            for index, info in infos.items():
                results[index] = StoreResult(info.path, info.sop_instance_uid, error=exc)
            return
        session = StoreSession(assoc, destination, self.timeout)
        try:
            for index, info in infos.items():
                if stop is not None and stop.is_set():
                    stopped = SenderStopped("sender stopped before this file was sent")
                    results[index] = StoreResult(info.path, info.sop_instance_uid, error=stopped)
                    continue
                try:
                    status = session.store(info.path, info)
                    results[index] = StoreResult(info.path, info.sop_instance_uid, status=status)
                except DeliveryFailed as exc:
                    results[index] = StoreResult(info.path, info.sop_instance_uid, error=exc)
                except Exception as exc:  # noqa: BLE001 - a bug must fail the file, not the sender
                    logger.exception("unexpected error sending to %s", destination)
                    failure = session._fail(f"unexpected error sending to {destination}: {exc!r}")
                    results[index] = StoreResult(info.path, info.sop_instance_uid, error=failure)
                    session.abort()
        finally:
            session.close()
            self._forget(assoc)
