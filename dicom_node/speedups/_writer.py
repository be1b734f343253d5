"""The SCU half of the speed-ups: a C-STORE's command and data set written as P-DATA-TF PDUs by the sender.

pynetdicom's ``send_c_store`` pauses the association's reactor for every
message (waiting out its 1 ms sleep), builds the command set as a pydicom data
set twice (once for the group length) and hands each PDU to the DUL thread.
For a file whose transfer syntax the peer accepted, :class:`PDataWriter`
instead pauses the reactor once per batch, exactly as ``send_c_store`` does,
encodes the fixed C-STORE-RQ command set itself (PS3.7 9.3.1.1, Implicit VR
Little Endian per PS3.7 6.3.1), puts the command PDV and the first data PDV
into one P-DATA-TF PDU and writes it straight to the socket (TLS sockets, which
must not be written and read from two threads, go through the DUL's
``send_pdu``). Responses still come back through pynetdicom's DUL and DIMSE
provider. The file is read in fragments as it goes out, never whole.

It relies on two private attributes of pynetdicom 3.0's ``Association``
(``_reactor_checkpoint``, ``_is_paused``); :meth:`PDataWriter.fits` says
whether an association has them and the speed-ups are on.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext

from dicom_node._c_store import COMMAND_LAST, DATA, DATA_LAST, PDV_OVERHEAD, FileInfo, encode_c_store_rq, encode_p_data_tf
from dicom_node.errors import DeliveryFailed
from dicom_node.speedups._switch import enabled

__all__ = ["PDataWriter"]

#: DUL poll interval for the SCU's short-lived associations (pynetdicom's default is 1 ms)
DUL_LOOP_DELAY = 0.0001
#: the largest P-DATA-TF PDU written when the peer sets no limit (PS3.8 D.1)
_MAX_PDU = 1 << 22


class PDataWriter:
    """Sends C-STOREs of one association as stored; ``fail(reason)`` marks the session broken and returns the error.

    Not thread-safe: it belongs to the session's sender thread.
    """

    def __init__(self, assoc: Association, destination: object, timeout: float,
                 fail: Callable[[str], DeliveryFailed]) -> None:
        self._assoc, self._destination, self._timeout, self._fail = assoc, destination, timeout, fail
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        self._raw_socket = sock if sock is not None and not isinstance(sock, ssl.SSLSocket) else None
        if self._raw_socket is not None:
            self._raw_socket.settimeout(timeout)  # bounds our writes; the DUL reads only what select() saw

    @staticmethod
    def fits(assoc: Association) -> bool:
        """True when the speed-ups are on and ``assoc`` has the reactor pause this writer relies on."""
        return enabled() and hasattr(assoc, "_reactor_checkpoint") and hasattr(assoc, "_is_paused")

    @staticmethod
    def tune(assoc: Association) -> None:
        """With the speed-ups on: a shorter DUL poll, and pynetdicom's per-PDU debug log handlers unbound.

        Those handlers format every message for a log nobody reads (and could name patient
        data): about a sixth of the CPU time of a small C-STORE. They stay while pynetdicom's
        debug log is on.
        """
        if not enabled():
            return
        assoc.dul._run_loop_delay = DUL_LOOP_DELAY
        if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            return
        for event, handler in (
            (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
            (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
            (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
            (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
        ):
            assoc.unbind(event, handler)

    def pause_reactor(self) -> None:
        """Stop the association's reactor taking DIMSE messages, as ``send_c_store`` does itself."""
        assoc: Any = self._assoc
        if assoc._reactor_checkpoint.is_set():
            assoc._reactor_checkpoint.clear()
            deadline = time.monotonic() + self._timeout
            while not assoc._is_paused:
                if time.monotonic() > deadline or not assoc.is_established:
                    raise self._fail(f"association to {self._destination} did not pause for sending")
                time.sleep(0.0001)

    def resume_reactor(self) -> None:
        self._assoc._reactor_checkpoint.set()

    def store(self, info: FileInfo, cx: PresentationContext, message_id: int) -> Any:
        """Send the command set and the file's data set byte for byte (PS3.7 9.3.1, PS3.8 9.3.5); the response.

        The command PDV and the first data PDV share one P-DATA-TF PDU (a PDU may carry
        several PDVs; command and data never share one PDV), so a small instance is one
        write; larger data sets follow in fragments that fit the peer's maximum PDU.
        """
        self.pause_reactor()
        context_id = int(cx.context_id or 0)
        command = encode_c_store_rq(message_id, info.sop_class_uid, info.sop_instance_uid)
        peer_max = int(self._assoc.acceptor.maximum_length or 0)  # 0: no limit (PS3.8 D.1)
        limit = min(peer_max, _MAX_PDU) if peer_max else _MAX_PDU
        first = limit - 2 * PDV_OVERHEAD - len(command)
        if first < 1:
            raise DeliveryFailed(
                f"{self._destination} accepts PDUs of at most {peer_max} bytes, too small for a C-STORE command set"
            )
        try:
            with open(info.path, "rb") as handle:
                handle.seek(info.offset)
                self._send_data(handle, context_id, [(context_id, COMMAND_LAST, command)], first, limit - PDV_OVERHEAD)
        except OSError as exc:
            raise self._fail(f"cannot read {str(info.path)!r} while sending it: {exc}") from None
        return self._response(message_id)

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
            raise self._fail(f"connection to {self._destination} failed while sending: {exc}") from None

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
                raise self._fail(f"association to {self._destination} was aborted during the C-STORE")
            self._assoc.abort()
            raise self._fail(
                f"{self._destination} sent no C-STORE response within {self._timeout:g} s; association aborted")
        answered = getattr(rsp, "MessageIDBeingRespondedTo", None)
        if answered != message_id or type(rsp).__name__ != "C_STORE":
            self._assoc.abort()
            raise self._fail(
                f"{self._destination} answered message {answered} with {type(rsp).__name__}, "
                f"expected the C-STORE response to {message_id}; association aborted"
            )
        return rsp
