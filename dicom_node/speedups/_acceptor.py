"""The SCP half of the speed-ups: an event-driven association acceptor for pynetdicom, no polling.

pynetdicom 3.0's acceptor runs two polling loops per association: the
association thread sleeps 1 ms between looks at its DIMSE queue, and the DUL
thread sleeps ``_run_loop_delay`` between looks at its socket and queues. At
hundreds of C-STOREs a second that adds one to two milliseconds to every
message, and with many associations the wake-ups compete for the GIL and the
CPU. This module keeps pynetdicom's state machine, PDU decoding and service
classes untouched and replaces only the waits, through pynetdicom's own hook
for a custom server (``AE.make_server(..., request_handler=...)``):

- the association thread blocks on an event set when a DIMSE message, an ACSE
  primitive (release, abort) or the end of the DUL arrives;
- the DUL thread blocks in ``select`` on its socket and a wake-up pipe that is
  written when the association queues something to send;
- a successful C-STORE-RSP (PS3.7 9.3.1.2) is encoded directly, without
  building a pydicom data set twice; every other message goes the usual way.

Both loops mirror pynetdicom 3.0's ``Association._run_reactor`` and
``DULServiceProvider.run_reactor`` with only the sleeps replaced. With the
speed-ups switched off (:mod:`dicom_node.speedups`) the same request handler
keeps the connection hardening and builds pynetdicom's own association.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import ssl
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import RequestHandler
from pynetdicom.utils import make_target

from dicom_node._c_store import encode_c_store_rsp
from dicom_node._receive import StreamingDimse
from dicom_node._transport import HardenedServer, start_connection
from dicom_node.speedups._switch import enabled

__all__ = ["EventDrivenRequestHandler", "encode_c_store_rsp"]

LOGGER = logging.getLogger("pynetdicom")  # the reactors log as pynetdicom's would
logger = logging.getLogger(__name__)

#: Longest wait between checks of timers (idle, ARTIM) when nothing arrives.
IDLE_CHECK_SECONDS = 0.05



class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``wake`` after every put."""

    def __init__(self, wake: Any, previous: queue.Queue | None = None) -> None:  # type: ignore[type-arg]
        super().__init__()
        self._wake = wake
        if previous is not None:
            self.queue.extend(previous.queue)

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._wake()


class _EventDrivenDul(DULServiceProvider):
    """The DUL provider, waiting in ``select`` on its socket and a wake-up pipe instead of sleeping."""

    def _adopt(self) -> None:
        """Set up the wake-up pipe and waking queues (on a provider whose class was just switched)."""
        self._pipe_r, self._pipe_w = os.pipe()
        os.set_blocking(self._pipe_r, False)
        os.set_blocking(self._pipe_w, False)
        self._idle = False
        self._pipe_lock = threading.Lock()  # no wake-up byte may go to a closed (and reused) descriptor
        # Keep what is queued already (the socket queued Evt5, "connection open", when it was made).
        self.to_provider_queue = _WakingQueue(self._poke, self.to_provider_queue)
        self.event_queue = _WakingQueue(self._poke, self.event_queue)
        self.to_user_queue = _WakingQueue(self._user_notice, self.to_user_queue)

    def run(self) -> None:
        """The thread's body (pynetdicom bound its own loop as the target before the switch)."""
        make_target(self.run_reactor)()

    def _poke(self) -> None:
        """Wake the DUL thread if it waits (called by whoever queued something for it)."""
        if self._idle and threading.current_thread() is not self:
            with self._pipe_lock:
                if self._pipe_w < 0:
                    return
                try:
                    os.write(self._pipe_w, b"\0")
                except BlockingIOError:
                    pass  # the pipe is full: a wake-up is pending anyway

    def _user_notice(self) -> None:
        waker = getattr(self.assoc, "_wake", None)
        if waker is not None:
            waker.set()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._poke()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._poke()
        return super().stop_dul()

    def _wait(self) -> None:
        """Block until the socket is readable, something is queued, or the idle check is due."""
        self._idle = True
        try:
            if not (self.event_queue.empty() and self.to_provider_queue.empty()) or self._kill_thread:
                return
            sock = getattr(self.socket, "socket", None)
            if sock is None:
                select.select([self._pipe_r], [], [], IDLE_CHECK_SECONDS)
            elif isinstance(sock, ssl.SSLSocket) and sock.pending():
                return
            else:
                try:
                    select.select([sock, self._pipe_r], [], [], IDLE_CHECK_SECONDS)
                except (OSError, ValueError):  # socket closed under us: let the loop notice
                    return
        finally:
            self._idle = False
        try:
            os.read(self._pipe_r, 4096)
        except (BlockingIOError, OSError):
            pass

    def run_reactor(self) -> None:
        """pynetdicom 3.0's DUL loop, waiting in :meth:`_wait` instead of sleeping."""
        try:
            self._loop()
        finally:
            self._user_notice()  # the association reactor checks whether the DUL is alive
            with self._pipe_lock:
                os.close(self._pipe_r)
                os.close(self._pipe_w)
                self._pipe_w = -1

    def _loop(self) -> None:
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                LOGGER.error("Exception in DUL.run(), aborting association")
                LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                if self.socket is not None:
                    self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False


class _FastDimse(StreamingDimse):
    """DIMSE provider that streams C-STORE data sets to disk and encodes a plain successful C-STORE-RSP itself."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (
            type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status == 0x0000
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            command = encode_c_store_rsp(
                int(primitive.MessageIDBeingRespondedTo),
                str(primitive.AffectedSOPClassUID),
                str(primitive.AffectedSOPInstanceUID),
                0x0000,
            )
            pdu_limit = self.maximum_pdu_size
            if pdu_limit == 0 or len(command) + 6 <= pdu_limit:  # one PDV (PS3.8 E.2)
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


class _EventDrivenAssociation(Association):
    """An acceptor whose reactor waits on an event instead of sleeping 1 ms per loop."""

    _wake: threading.Event

    def kill(self) -> None:
        self._wake.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's acceptor loop; the 1 ms sleep is a wait for the next message or notice."""
        self._is_paused = False
        while not self._kill:
            self._wake.wait(IDLE_CHECK_SECONDS)
            self._wake.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._wake.set()  # look again at once: more may be queued
                self._serve_request(msg, int(context_id))  # type: ignore[arg-type]

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class EventDrivenRequestHandler(RequestHandler):
    """pynetdicom's request handler, building an :class:`_EventDrivenAssociation` for each connection.

    Runs in the connection's own thread (:mod:`dicom_node._transport`): TLS
    handshake, read timeout and guarded socket there, then the association; the
    thread waits for the association to end and frees the connection's slot.
    """

    def handle(self) -> None:
        server = self.server
        try:
            assoc = start_connection(self)
            if assoc is not None:
                assoc.join()
                abandon = getattr(assoc.dimse, "abandon", None)
                if abandon is not None:
                    abandon()
        finally:
            if isinstance(server, HardenedServer):
                server.release_slot(self.client_address)

    def _create_association(self) -> Association:
        """pynetdicom's association, switched to the event-driven classes before its threads start.

        The providers are switched in place (not rebuilt) so that every timeout and
        setting pynetdicom gave them stays as it is.
        """
        assoc = super()._create_association()
        if not enabled():
            return assoc
        assoc.__class__ = _EventDrivenAssociation
        wake = threading.Event()
        assoc._wake = wake  # type: ignore[attr-defined]
        assoc.dul.__class__ = _EventDrivenDul
        assoc.dul._adopt()  # type: ignore[attr-defined]
        assoc.dimse.__class__ = _FastDimse
        assoc.dimse.msg_queue = _WakingQueue(wake.set, assoc.dimse.msg_queue)
        return assoc
