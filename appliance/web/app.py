"""The dashboard: server-rendered pages, ``/metrics``, ``/healthz`` and ``/api/status``.

Pages show only opaque job ids, states, counts and engine versions, never a
patient's name, id, birth date or accession number (invariant 4); they read
the state store's rows, never the spooled files. Changes (engine install,
activate, rollback) need ``[web] token``, as ``Authorization: Bearer TOKEN``
or a ``token`` form field; with no token configured they are refused. The token
is checked before any body is read, bodies are size-capped and uploads are
streamed to disk, and every response carries security headers
(``appliance.web._guard``).

The app is assembled here from routers with one job each: ``_pages`` (``/``,
``/engines``), ``_engine_routes`` (activate, rollback, install) and ``_probes``
(``/metrics``, ``/healthz``, ``/api/status``); what they show comes from the
app's :class:`~appliance.web._context.Dashboard`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response

from appliance.config import Config
from appliance.state import StateStore
from appliance.web import _engine_routes, _pages, _probes
from appliance.web._context import Dashboard, HealthCheck
from appliance.web._guard import CLOSE, SECURITY_HEADERS, SecurityHeaders, clear_uploads

__all__ = ["HealthCheck", "create_app"]

logger = logging.getLogger(__name__)


def create_app(
    config: Config, store: StateStore, health_checks: Mapping[str, HealthCheck] | None = None
) -> FastAPI:
    """The dashboard app over ``store``; ``health_checks`` (name -> callable) join ``/healthz``."""
    app = FastAPI(title="Cancer-imaging appliance", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders)
    clear_uploads(config.data_dir)
    app.state.dashboard = Dashboard(config, store, dict(health_checks or {}))
    for module in (_pages, _engine_routes, _probes):
        app.include_router(module.router)
    app.exception_handler(HTTPException)(_http_error)
    app.exception_handler(Exception)(_server_error)
    return app


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """An :class:`HTTPException` as plain text; on a request with a body, the connection is closed."""
    headers = dict(exc.headers or {})
    if request.method not in ("GET", "HEAD"):
        headers.update(CLOSE)  # the body may be unread: close rather than drain it
    return PlainTextResponse(f"{exc.status_code}: {exc.detail}\n", status_code=exc.status_code, headers=headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """Any other error: 500 without details; logged by type only (no patient data)."""
    # answered outside the middleware stack, so the security headers are set here too
    logger.error("dashboard request %s %s failed: %s", request.method, request.url.path, type(exc).__name__)
    return PlainTextResponse("500: internal error\n", status_code=500, headers={**SECURITY_HEADERS, **CLOSE})
