"""The web component: uvicorn serving the dashboard in a thread, stopped gracefully."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.state import StateStore
from appliance.web.app import create_app

__all__ = ["WebServer", "web_component"]

logger = logging.getLogger(__name__)


class WebServer:
    """Runs ``app`` on ``host:port`` (port 0: any free port, see :attr:`port`); service component ``web``."""

    name = "web"

    def __init__(self, app: FastAPI, host: str, port: int, start_timeout: float = 15.0,
                 max_connections: int | None = None) -> None:
        self.app, self.host, self.requested_port = app, host, port
        self.start_timeout = start_timeout
        self.max_connections = max_connections
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        config = uvicorn.Config(
            self.app, host=self.host, port=self.requested_port, log_level="warning", lifespan="off",
            access_log=False, timeout_graceful_shutdown=3, limit_concurrency=self.max_connections,
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
                     max_connections=config.web.max_connections)
