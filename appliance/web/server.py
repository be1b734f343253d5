"""The web component: uvicorn serving the dashboard in a thread, stopped gracefully.

The dashboard shares its process (and its file descriptors) with the DICOM
node, so connections are bounded: at most ``max_connections`` open at once
(more are closed as they are accepted), and a connection that has not sent its
request head within ``header_timeout`` seconds is closed (uvicorn's own
keep-alive timeout covers the time between requests).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.state import StateStore
from appliance.web.app import create_app

__all__ = ["WebServer", "web_component"]

logger = logging.getLogger(__name__)


class _BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a cap on open connections and a deadline for the first request head."""

    max_connections: int | None = None
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            logger.warning("dashboard: %d connections open, closing a new one", len(self.connections) - 1)
            transport.close()
            return
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_overdue)

    def _head_overdue(self) -> None:
        if self.cycle is None and not self.transport.is_closing():  # no request head yet
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(exc)


class WebServer:
    """Runs ``app`` on ``host:port`` (port 0: any free port, see :attr:`port`); service component ``web``."""

    name = "web"

    def __init__(self, app: FastAPI, host: str, port: int, start_timeout: float = 15.0,
                 max_connections: int | None = None, header_timeout: float = 10.0) -> None:
        self.app, self.host, self.requested_port = app, host, port
        self.start_timeout = start_timeout
        self.max_connections, self.header_timeout = max_connections, header_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        config = uvicorn.Config(
            self.app, host=self.host, port=self.requested_port, log_level="warning", lifespan="off",
            access_log=False, timeout_graceful_shutdown=3, limit_concurrency=self.max_connections,
            http=type("BoundedH11Protocol", (_BoundedH11Protocol,),
                      {"max_connections": self.max_connections, "header_timeout": self.header_timeout}),
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not server.started:
            if not self._thread.is_alive():
                raise ApplianceError(f"the web server could not listen on {self.host}:{self.requested_port}")
            if time.monotonic() > deadline:
                self.stop()
                raise ApplianceError(f"the web server did not start on {self.host}:{self.requested_port} "
                                     f"within {self.start_timeout:.0f} s")
            self._thread.join(0.02)
        sockets = [s for srv in getattr(server, "servers", []) for s in srv.sockets]
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        logger.info("dashboard on http://%s:%d/", self.host, self.port)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=2)
        self._server = self._thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def web_component(config: Config, store: StateStore) -> WebServer:
    """The dashboard on ``[web] host`` and ``port`` for ``appliance.service``."""
    return WebServer(create_app(config, store), config.web.host, config.web.port,
                     max_connections=config.web.max_connections, header_timeout=config.web.header_timeout_seconds)
