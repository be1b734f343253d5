"""The STOW-RS listener: DICOMweb Store Transaction into the node's durable spool (PS3.18 10.5).

``POST {base}/studies`` and ``POST {base}/studies/{StudyInstanceUID}`` accept a
``multipart/related; type="application/dicom"`` body of DICOM Part 10
instances, with or without Content-Length (``Transfer-Encoding: chunked``).
The body is parsed as it arrives (:mod:`dicom_node._multipart`) and every
instance goes through the same durable path as a C-STORE
(:class:`dicom_node.store.InstanceStore`: UID checks, data-set limits, the
free-space refusal, fsync, rename, row commit, duplicates stored once); a part
is streamed into its spool file, never held whole. The answer is the Store
Instances Response (:mod:`dicom_node._stow_response`), sent only after every
instance listed in it as stored is durable and committed.

Clients authenticate with a bearer token listed in the configuration
(``[[dicomweb.clients]]``); a request without a known token is refused with 401
before its body is read, and logged with the client's address only. HTTP
statuses: 200, 202 and 409 as PS3.18 prescribes for the instances' outcomes;
400 for a body that is not well-formed multipart, ends before its close
delimiter, or has no part; 401; 406 when the client accepts no JSON; 408 when
the body stalls past ``idle_timeout``; 413 past ``max_request_bytes``; 415 for
another media type. A body cut off mid-part leaves no file and no row of that
part; parts complete before the cut are stored (each instance is its own
durable unit, as for C-STORE).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicom_node._multipart import MultipartError, MultipartReader, content_type_params
from dicom_node._storage_classes import STORAGE_SOP_CLASSES
from dicom_node._stow_response import DICOM_JSON, store_instances_response
from dicom_node._stow_upload import Upload
from dicom_node.errors import NodeError
from dicom_node.limits import DataSetLimits
from dicom_node.spool import Spool
from dicom_node.store import InstanceSink, InstanceStore
from dicom_node.tls import server_context
from dicom_node.uids import is_valid_uid

__all__ = ["StowClient", "StowError", "StowLimits", "StowServer"]

logger = logging.getLogger(__name__)

_ACCEPTABLE = ("application/dicom+json", "application/json", "application/*", "*/*")
#: a refused client address is logged at most once in this many seconds (as the DIMSE listener does)
_LOG_EVERY = 5.0
_LOGGED_ADDRESSES = 1024


class StowError(NodeError):
    """The STOW-RS listener cannot start (address in use, TLS files)."""


@dataclass(frozen=True)
class StowClient:
    """A DICOMweb client allowed to store: its name (in logs and records) and its bearer token."""

    name: str
    token: str


@dataclass(frozen=True)
class StowLimits:
    """Bounds of the listener (the ``[dicomweb]`` keys of the same names)."""

    max_request_bytes: int = 16 << 30  #: body bytes of one request; more is refused with 413
    idle_timeout: float = 60.0  #: seconds the body may stall before the request is dropped (408)
    max_connections: int = 32  #: open connections; more are refused with 503 by uvicorn
    workers: int = 8  #: threads making completed instances durable


def _error(status: int, message: str) -> Response:
    """A refusal of the whole request, logged (the message names no patient data)."""
    logger.warning("STOW-RS request refused with HTTP %d: %s", status, message)
    return JSONResponse({"error": message}, status_code=status)


class StowServer:
    """The STOW-RS listener, a service component (``name``, ``start()``, ``stop()``); ``port=0`` picks a free port.

    ``require_token=False`` serves any client (a trusted network only); ``tls`` is
    ``(cert, key, ca)`` paths (``ca`` empty: no client certificate required).
    """

    name = "stow-rs"

    def __init__(
        self,
        host: str,
        port: int,
        spool: Spool,
        sink: InstanceSink,
        clients: Sequence[StowClient],
        require_token: bool = True,
        tls: tuple[str, str, str] | None = None,
        limits: StowLimits = StowLimits(),
        dataset_limits: DataSetLimits = DataSetLimits(),
        sop_classes: Sequence[str] = STORAGE_SOP_CLASSES,
        base_path: str = "/dicomweb",
    ) -> None:
        if require_token and not clients:
            raise StowError("STOW-RS requires a bearer token but no client is configured ([[dicomweb.clients]])")
        self.host, self._port = host, port
        self.store = InstanceStore(spool, sink, dataset_limits, transport="stowrs")
        self._clients = [(client.name, client.token.encode("utf-8")) for client in clients]
        self.require_token = require_token
        self.tls = tls
        self.limits = limits
        self._sop_classes = frozenset(sop_classes)
        base = self.base_path = "/" + base_path.strip("/")
        self.app = Starlette(routes=[
            Route(f"{base}/studies", self._stow, methods=["POST"]),
            Route(f"{base}/studies/{{study}}", self._stow, methods=["POST"]),
        ])
        self._executor: ThreadPoolExecutor | None = None
        self._refusals_logged: dict[str, float] = {}  # address -> when; touched on the event loop only
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port the listener is bound to once started (the configured one before)."""
        server = self._server
        if server is not None:
            for srv in getattr(server, "servers", []):
                for sock in srv.sockets:
                    return int(sock.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        """The base URL clients post to (``.../dicomweb``)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}{self.base_path}"

    def start(self, timeout: float = 15.0) -> None:
        """Listen (returns once bound)."""
        with self._lock:
            if self._server is not None:
                return
            config = uvicorn.Config(
                self.app, host=self.host, port=self._port, log_level="warning", lifespan="off", access_log=False,
                timeout_graceful_shutdown=3, limit_concurrency=self.limits.max_connections, http="h11",
            )
            config.load()
            if self.tls is not None:  # the node's TLS context (TLS 1.2+, client certificates with a CA)
                cert, key, ca = self.tls
                config.ssl = server_context(cert, key, ca or None)
            self._executor = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="stow")
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, name="stow-rs", daemon=True)
            self._server, self._thread = server, thread
            thread.start()
            deadline = time.monotonic() + timeout
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    self._server = None
                    self._stop(server, thread)
                    raise StowError(f"the STOW-RS listener could not listen on {self.host}:{self._port}")
                thread.join(0.02)
        logger.info("STOW-RS listening on %s/studies", self.url)

    def stop(self) -> None:
        """Stop listening; requests in progress get a few seconds to finish. Safe to call twice."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None and thread is not None:
            self._stop(server, thread)
            logger.info("STOW-RS listener stopped")

    def _stop(self, server: uvicorn.Server, thread: threading.Thread) -> None:
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=2)
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _authenticate(self, request: Request) -> str | None:
        """The name of the client whose bearer token the request carries, or None (compared in constant time)."""
        if not self.require_token:
            return "dicomweb"
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        offered = token.strip().encode("utf-8")
        found = None
        for name, expected in self._clients:
            if hmac.compare_digest(offered, expected):
                found = name
        return found

    def _log_refusal(self, address: str) -> None:
        """Log a refused request, at most once per address every :data:`_LOG_EVERY` seconds (no token logged)."""
        now = time.monotonic()
        if now - self._refusals_logged.get(address, -_LOG_EVERY) < _LOG_EVERY:
            return
        if len(self._refusals_logged) >= _LOGGED_ADDRESSES:
            self._refusals_logged.clear()
        self._refusals_logged[address] = now
        logger.warning("STOW-RS request from %s refused: no or unknown bearer token", address)

    async def _stow(self, request: Request) -> Response:
        """One Store Transaction (PS3.18 10.5.1): refuse what cannot be served, else receive the body."""
        address = request.client.host if request.client else "?"
        client = self._authenticate(request)
        if client is None:
            self._log_refusal(address)
            return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer realm="dicomweb"'})
        study = request.path_params.get("study", "")
        if study and not is_valid_uid(study):
            return _error(400, "the Study Instance UID in the URL is not a valid UID")
        media_type, params = content_type_params(request.headers.get("content-type", ""))
        if media_type != "multipart/related" or params.get("type", "").lower() != "application/dicom":
            return _error(415, 'only multipart/related; type="application/dicom" is accepted, '
                               f'not {media_type[:60]!r} of type {params.get("type", "")[:60]!r}')
        accept = request.headers.get("accept", "")
        if accept and not any(kind in accept.lower() for kind in _ACCEPTABLE):
            return _error(406, "the Store Instances Response is available as application/dicom+json only")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.max_request_bytes:
            return _error(413, f"request body of {length} bytes exceeds {self.limits.max_request_bytes} bytes")
        try:
            reader_upload = self._reader(params.get("boundary", ""), client, study)
        except MultipartError as exc:
            return _error(400, str(exc))
        return await self._receive(request, *reader_upload, client)

    def _reader(self, boundary: str, client: str, study: str) -> tuple[MultipartReader, Upload]:
        assert self._executor is not None
        upload = Upload(self.store, client, study, self._executor, self._sop_classes)
        return MultipartReader(boundary, upload.on_part, upload.on_data, upload.on_end), upload

    async def _receive(self, request: Request, reader: MultipartReader, upload: Upload, client: str) -> Response:
        """Stream the body through the reader; answer once every handed-over instance is settled."""
        refusal: Response | None = None
        received = 0
        stream = request.stream().__aiter__()
        try:
            while True:
                async with asyncio.timeout(self.limits.idle_timeout):
                    try:
                        chunk = await stream.__anext__()
                    except StopAsyncIteration:
                        break
                received += len(chunk)
                if received > self.limits.max_request_bytes:
                    refusal = _error(413, f"request body exceeds {self.limits.max_request_bytes} bytes")
                    break
                reader.feed(chunk)
                await upload.submit()
            if refusal is None:
                reader.close()
        except MultipartError as exc:
            refusal = _error(400, str(exc))
        except TimeoutError:
            refusal = _error(408, f"request body stalled for more than {self.limits.idle_timeout:g} s")
        except ClientDisconnect:
            refusal = Response(status_code=400)  # nobody reads it
            logger.warning("STOW-RS from %s: connection dropped mid-body", client)
        finally:
            if refusal is not None or not reader.complete:
                upload.abandon()
        results = await upload.results()
        stored = sum(1 for r in results if r.outcome.ok)
        if refusal is not None:
            logger.warning("STOW-RS from %s: request refused with HTTP %d after %d instance(s) stored",
                           client, refusal.status_code, stored)
            return refusal
        if not results:
            return _error(400, "the multipart body has no part")
        status, body = store_instances_response(results)
        logger.info("STOW-RS from %s: %d instance(s) stored, %d failed (HTTP %d)",
                    client, stored, len(results) - stored, status)
        return Response(body, status_code=status, media_type=DICOM_JSON)

