"""The storage SCP's transport: limits and timeouts on every connection, from accept on.

pynetdicom's server accepts, wraps TLS in its accept thread and reads whatever
length a PDU declares. Against a hostile network the node needs more
(shared/DESIGN.md invariants 3 and 6), and gets it here through pynetdicom's
own hooks (``AE.make_server(server_class=..., request_handler=...)``):

- connections are counted per source address and in total; one over either
  limit is closed at once, with a log line (at most one per source every few
  seconds);
- the listen backlog is sized for bursts (:attr:`NetworkLimits.backlog`);
- the TLS handshake runs in the connection's own thread with a timeout, and a
  refused handshake is logged; the accept thread never waits on a peer;
- every accepted socket has a read timeout: a PDU that does not arrive whole
  within :attr:`NetworkLimits.pdu_read_timeout` closes the connection (the
  ARTIM timer, PS3.8 9.1.5, bounds the wait for the first PDU);
- a PDU longer than we announced (P-DATA-TF, PS3.8 9.3.5 and D.1) or an
  A-ASSOCIATE-RQ longer than :attr:`NetworkLimits.max_associate_rq` is refused
  from its 6-byte header, before its body is read and before any AE title is
  checked: the node answers A-ABORT and closes.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from dicom_node.limits import NetworkLimits

__all__ = ["HardenedServer", "escape_pynetdicom_logs", "hardened_server_class", "printable", "start_connection"]

logger = logging.getLogger(__name__)

_A_ASSOCIATE_RQ = 0x01
_P_DATA_TF = 0x04
#: A-ABORT from the service provider, reason "invalid-PDU-parameter value" (PS3.8 9.3.8, Table 9-26)
_ABORT_INVALID_PARAMETER = struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x06)
#: at most one "limit reached" log line per source address in this many seconds
_LOG_EVERY = 5.0


def printable(text: object, limit: int = 64) -> str:
    """``text`` safe for a log line: control characters escaped, cut to ``limit`` characters."""
    shown = str(text)[:limit]
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in shown)


class _OneLine(logging.Filter):
    """Escape control characters in a record (a peer's AE title may hold a newline); no peer-made traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = printable(message, 2000), ()
        return True


def escape_pynetdicom_logs() -> None:
    """Put :class:`_OneLine` on pynetdicom's loggers: they log values taken from the peer's PDUs as they are."""
    names = [name for name in logging.Logger.manager.loggerDict if name.split(".")[0] == "pynetdicom"]
    for name in ["pynetdicom", *names]:
        target = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in target.filters):
            target.addFilter(_OneLine())


class _GuardedSocket(AssociationSocket):
    """pynetdicom's socket, refusing oversized PDUs from their header and reading PDUs with ``recv_into``."""

    _limits: NetworkLimits
    _peer: str
    _pdu_type: int | None

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes``; the DUL reads a 6-byte PDU header, then the length it declares (PS3.8 9.3.1)."""
        sock = self.socket
        if sock is None:
            return bytearray()
        expecting_header = self._pdu_type is None
        data = self._read(sock, nr_bytes)
        if expecting_header and nr_bytes == 6 and len(data) == 6:
            pdu_type, _, length = struct.unpack(">BBI", data)
            limit = self._limits.max_pdu if pdu_type == _P_DATA_TF else self._limits.max_associate_rq
            if length > limit:
                logger.warning(
                    "connection from %s refused: PDU type 0x%02X declares %d bytes, more than the limit of %d; "
                    "A-ABORT sent", self._peer, pdu_type, length, limit,
                )
                try:
                    sock.sendall(_ABORT_INVALID_PARAMETER)
                except OSError:
                    pass
                return data[:5]  # a short header: the DUL closes the connection (Evt17)
            self._pdu_type = pdu_type
        else:
            self._pdu_type = None
        return data

    def _read(self, sock: socket.socket, nr_bytes: int) -> bytearray:
        buf = bytearray(nr_bytes)
        got = 0
        with memoryview(buf) as view:
            try:
                while got < nr_bytes:
                    count = sock.recv_into(view[got:], nr_bytes - got)
                    if not count:
                        break
                    got += count
            except TimeoutError:
                logger.warning("connection from %s closed: no complete PDU within %g s",
                               self._peer, self._limits.pdu_read_timeout)
            except OSError:
                pass  # the DUL sees a short read and closes the connection (Evt17)
        del buf[got:]
        return buf


def guard_socket(assoc: Any, limits: NetworkLimits, peer: str) -> None:
    """Switch an association's :class:`AssociationSocket` to the guarded one (in place, settings kept)."""
    sock = assoc.dul.socket
    sock.__class__ = _GuardedSocket
    sock._limits = limits
    sock._peer = peer
    sock._pdu_type = None


class HardenedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with connection limits and TLS out of the accept thread.

    Configured through class attributes by :func:`hardened_server_class`.
    """

    daemon_threads = True
    block_on_close = False
    limits: NetworkLimits = NetworkLimits()
    tls_context: ssl.SSLContext | None = None
    receiver: Any = None  #: what the DIMSE provider asks for an incoming C-STORE's file (the SCP)

    def server_activate(self) -> None:
        self.request_queue_size = self.limits.backlog
        self._slots_lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}
        super().server_activate()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only; the TLS handshake happens in the connection's thread."""
        client, address = self.socket.accept()  # type: ignore[union-attr]
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Take a connection slot, or refuse the connection when a limit is reached."""
        source = str(client_address[0])
        with self._slots_lock:
            total = sum(self._open.values())
            if total >= self.limits.max_connections:
                why = f"{total} connections open, the limit is max_connections={self.limits.max_connections}"
            elif self._open[source] >= self.limits.max_connections_per_source:
                why = (f"{self._open[source]} connections open from this address, the limit is "
                       f"max_connections_per_source={self.limits.max_connections_per_source}")
            else:
                self._open[source] += 1
                return True
            now = time.monotonic()
            if now - self._last_logged.get(source, -_LOG_EVERY) >= _LOG_EVERY:
                self._last_logged[source] = now
                logger.warning("connection from %s refused: %s", source, why)
        return False

    def release_slot(self, client_address: Any) -> None:
        source = str(client_address[0])
        with self._slots_lock:
            self._open[source] -= 1
            if self._open[source] <= 0:
                del self._open[source]

    def open_connections(self) -> int:
        """Connections holding a slot now."""
        with self._slots_lock:
            return sum(self._open.values())


def hardened_server_class(
    limits: NetworkLimits, tls_context: ssl.SSLContext | None, receiver: Any
) -> type[HardenedServer]:
    """A :class:`HardenedServer` subclass carrying this SCP's limits, TLS context and receiver."""
    return type("StorageServer", (HardenedServer,),
                {"limits": limits, "tls_context": tls_context, "receiver": receiver})


def start_connection(handler: Any) -> Any:
    """In the connection's thread: TLS handshake (bounded), read timeout, association; returns it or None.

    ``handler`` is the pynetdicom request handler of this connection.
    """
    server: HardenedServer = handler.server
    limits = server.limits
    peer = str(handler.client_address[0])
    sock: socket.socket = handler.request
    if server.tls_context is not None:
        sock.settimeout(limits.tls_handshake_timeout)
        try:
            sock = server.tls_context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else printable(getattr(exc, "reason", None) or exc, 120)
            logger.warning("refused TLS handshake from %s: %s", peer, reason)
            handler.request.close()
            return None
        handler.request = sock
    sock.settimeout(limits.pdu_read_timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    assoc = handler._create_association()
    guard_socket(assoc, limits, peer)
    evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": handler.client_address})
    assoc.start()
    return assoc
