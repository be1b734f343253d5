"""The storage SCU that delivers results to PACS: C-ECHO and C-STORE (PS3.4 Annex A and B).

One association carries a whole batch of files to one destination. Every
outcome is either success or a :class:`~dicom_node.errors.DeliveryFailed`
whose message says why: association refused, rejected or aborted, a timeout,
or a non-success status with its hex code and meaning (PS3.4 B.2.3).

Where the time goes, and why this SCU is fast
---------------------------------------------
A plain pynetdicom SCU manages about 21 C-STOREs/s over loopback: a floor of
about 47 ms per operation. pynetdicom writes the command set and the data set
of a C-STORE-RQ as two separate P-DATA-TF PDUs, two small ``send()`` calls on
a socket that has Nagle's algorithm on. Nagle holds the second write until the
first is acknowledged, and the peer (waiting for the rest of the message before
it answers) delays that ACK by its delayed-ACK timer, 40 ms on Linux. So every
C-STORE waits for a timer. Fixes, none of which fork pynetdicom:

* ``TCP_NODELAY`` on our socket, set from the documented ``EVT_CONN_OPEN``
  hook on the :class:`~pynetdicom.transport.AssociationSocket`: the floor is gone
  (about 140/s).
* The DUL reactor polls its socket and sleeps ``_run_loop_delay`` (1 ms)
  whenever a loop finds nothing to do; we set it to 0.1 ms for our
  short-lived associations (plain pynetdicom + TCP_NODELAY: about 140-200/s).
* What is left is per-message work, not waiting: ``send_c_store`` pauses the
  association's reactor for every message (waiting out its 1 ms sleep), builds
  the command set as a pydicom Dataset twice (once for the group length),
  decodes and re-encodes every file, and hands each PDU to the DUL thread.
  For a file whose transfer syntax the peer accepted we instead pause the
  reactor once per batch, exactly as ``send_c_store`` does, encode the fixed
  C-STORE-RQ command set ourselves (PS3.7 9.3.1.1, Implicit VR Little Endian
  per PS3.7 6.3.1), put the command PDV and the first data PDV into one
  P-DATA-TF PDU and write it straight to the socket (TLS sockets, which must
  not be written and read from two threads, go through the DUL's
  ``send_pdu``). Responses still come back through pynetdicom's DUL and DIMSE
  provider. pynetdicom's per-PDU debug log handlers are unbound unless its
  debug log is on. A file is read in fragments as it goes out, never whole;
  only a file the peer wants in another uncompressed syntax goes through
  ``send_c_store`` decoded, and only up to :data:`CONVERT_LIMIT` bytes.

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
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS, Status, code_to_category

from dicom_node._c_store import (
    COMMAND_LAST,
    DATA,
    DATA_LAST,
    PDV_OVERHEAD,
    UNCOMPRESSED,
    FileInfo,
    UnsendableFile,
    contexts_for,
    encode_c_store_rq,
    encode_p_data_tf,
    read_info,
)
from dicom_node._storage_classes import VERIFICATION
from dicom_node.errors import DeliveryFailed, SenderStopped

__all__ = [
    "Destination",
    "StorageSCU",
    "StoreResult",
    "StoreSession",
    "UnsendableFile",
    "describe_status",
]

logger = logging.getLogger(__name__)

#: DUL poll interval for our associations (pynetdicom's default is 1 ms)
_DUL_LOOP_DELAY = 0.0001
_VERIFICATION = VERIFICATION  # Verification SOP Class (PS3.4 A.4)
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


def _quiet(assoc: Association) -> None:
    """Unbind pynetdicom's per-PDU/DIMSE debug log handlers unless its debug log is on.

    They format every message for a log nobody reads (and could name patient data):
    about a sixth of the CPU time of a small C-STORE.
    """
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    for event, handler in (
        (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
        (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
        (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
        (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
    ):
        assoc.unbind(event, handler)



class StoreSession:
    """One established association to a destination; send files with :meth:`store`.

    Not thread-safe: one session belongs to one sender thread. ``abort()`` may be
    called from another thread to stop it.
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
        self._fast = hasattr(assoc, "_reactor_checkpoint") and hasattr(assoc, "_is_paused")
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        self._raw_socket = sock if sock is not None and not isinstance(sock, ssl.SSLSocket) else None
        if self._raw_socket is not None:
            self._raw_socket.settimeout(timeout)  # bounds our writes; the DUL reads only what select() saw

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
        if cx is not None and self._fast:
            rsp = self._store_as_stored(info, cx)
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

    def _pause_reactor(self) -> None:
        """Stop the association's reactor taking DIMSE messages, as ``send_c_store`` does itself."""
        assoc: Any = self._assoc
        if assoc._reactor_checkpoint.is_set():
            assoc._reactor_checkpoint.clear()
            deadline = time.monotonic() + self._timeout
            while not assoc._is_paused:
                if time.monotonic() > deadline or not assoc.is_established:
                    raise self._fail(f"association to {self.destination} did not pause for sending")
                time.sleep(0.0001)

    def _resume_reactor(self) -> None:
        if self._fast:
            self._assoc._reactor_checkpoint.set()

    def _send_pdvs(self, pdvs: list[tuple[int, int, bytes]]) -> None:
        """One P-DATA-TF PDU carrying ``(context id, message control header, bytes)`` PDVs (PS3.8 9.3.5).

        Over plain TCP the PDU is written from this thread: sending P-DATA leaves the
        DUL state machine in Sta6 (DT-1), nothing else writes while the reactor is
        paused, and a socket may send in one thread while the DUL thread reads in
        another. A TLS socket may not, so TLS goes through the DUL's queue.
        """
        if self._raw_socket is None:
            pdata = P_DATA()
            pdata.presentation_data_value_list = [[cx, bytes((header,)) + data] for cx, header, data in pdvs]  # type: ignore[misc]
            self._assoc.dul.send_pdu(pdata)
            return
        try:
            self._raw_socket.sendall(encode_p_data_tf(pdvs))
        except OSError as exc:
            raise self._fail(f"connection to {self.destination} failed while sending: {exc}") from None

    def _store_as_stored(self, info: FileInfo, cx: PresentationContext) -> Any:
        """Send the command set and the file's data set byte for byte (PS3.7 9.3.1, PS3.8 9.3.5).

        The command PDV and the first data PDV share one P-DATA-TF PDU (a PDU may carry
        several PDVs; command and data never share one PDV), so a small instance is one
        write; larger data sets follow in fragments that fit the peer's maximum PDU.
        """
        self._pause_reactor()
        context_id = int(cx.context_id or 0)
        message_id = self._next_id()
        command = encode_c_store_rq(message_id, info.sop_class_uid, info.sop_instance_uid)
        peer_max = int(self._assoc.acceptor.maximum_length or 0)  # 0: no limit (PS3.8 D.1)
        limit = min(peer_max, 1 << 22) if peer_max else 1 << 22
        first = limit - 2 * PDV_OVERHEAD - len(command)
        if first < 1:
            raise DeliveryFailed(
                f"{self.destination} accepts PDUs of at most {peer_max} bytes, too small for a C-STORE command set"
            )
        try:
            with open(info.path, "rb") as handle:
                handle.seek(info.offset)
                self._send_data(handle, context_id, [(context_id, COMMAND_LAST, command)], first, limit - PDV_OVERHEAD)
        except OSError as exc:
            raise self._fail(f"cannot read {str(info.path)!r} while sending it: {exc}") from None
        return self._response(message_id)

    def _send_data(
        self, handle: BinaryIO, context_id: int, leading: list[tuple[int, int, bytes]], first: int, size: int
    ) -> None:
        """Data set fragments; the last one has the last-fragment bit set (PS3.8 E.2)."""
        chunk = handle.read(first)
        while True:
            following = handle.read(size)
            self._send_pdvs([*leading, (context_id, DATA if following else DATA_LAST, chunk)])
            if not following:
                return
            leading, chunk = [], following

    def _response(self, message_id: int) -> Any:
        _, rsp = self._assoc.dimse.get_msg(block=True)
        if rsp is None:
            if self._assoc.is_aborted or not self._assoc.is_established:
                raise self._fail(f"association to {self.destination} was aborted during the C-STORE")
            self._assoc.abort()
            raise self._fail(f"{self.destination} sent no C-STORE response within {self._timeout:g} s; association aborted")
        answered = getattr(rsp, "MessageIDBeingRespondedTo", None)
        if answered != message_id or type(rsp).__name__ != "C_STORE":
            self._assoc.abort()
            raise self._fail(
                f"{self.destination} answered message {answered} with {type(rsp).__name__}, "
                f"expected the C-STORE response to {message_id}; association aborted"
            )
        return rsp

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
        try:
            rsp = self._assoc.send_c_store(dataset, msg_id=self._next_id())
        except (ValueError, AttributeError, RuntimeError) as exc:
            raise DeliveryFailed(f"{self.destination}: cannot send {info.sop_instance_uid}: {exc}") from None
        if not rsp or "Status" not in rsp:
            if self._assoc.is_aborted or not self._assoc.is_established:
                raise self._fail(f"association to {self.destination} was aborted or timed out during the C-STORE")
            raise self._fail(f"{self.destination} sent an invalid C-STORE response")
        return rsp

    def close(self) -> None:
        """Release the association (PS3.8 7.2); abort when the peer does not answer."""
        self._resume_reactor()
        if self._assoc.is_established:
            self._assoc.release()
        if self._assoc.is_established:
            self._assoc.abort()

    def abort(self) -> None:
        """Abort from any thread (used when the sender stops)."""
        self._broken = self._broken or "aborted locally"
        self._resume_reactor()
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
            assoc.dul._run_loop_delay = _DUL_LOOP_DELAY
            _quiet(assoc)
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
        assoc = self._associate(destination, [build_context(_VERIFICATION)])
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
