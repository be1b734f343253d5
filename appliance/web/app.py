"""The dashboard: server-rendered pages, ``/metrics``, ``/healthz`` and ``/api/status``.

Pages show only opaque job ids, states, counts and engine versions, never a
patient's name, id, birth date or accession number (invariant 4); they read
the state store's rows, never the spooled files. Changes (engine install,
activate, rollback) need ``[web] token``, as ``Authorization: Bearer TOKEN``
or a ``token`` form field; with no token configured they are refused. The token
is checked before any body is read, bodies are size-capped and uploads are
streamed to disk, and every response carries security headers
(``appliance.web._guard``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appliance.config import Config
from appliance.jobs import JobQueue, backpressure
from appliance.slots import SlotBoard
from appliance.state import JobState, StateStore
from appliance.web._guard import (
    CLOSE,
    SECURITY_HEADERS,
    SecurityHeaders,
    authenticate,
    clear_uploads,
    is_form,
    receive_upload,
)
from appliance.web._metrics import free_bytes, ingest_by_transport, metrics_registry
from appliance.web._scrub import scrub, scrub_rows

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.globals["JobState"] = JobState  # the templates compare states by the enum, not by literals
TEMPLATES.env.filters["scrub"] = scrub
HealthCheck = Callable[[], bool]


def _registry(config: Config, store: StateStore) -> Any:
    from engines.registry import Registry

    return Registry(config.data_dir / "engines", config.trusted_keys_dir, audit=store.audit, **config.engine_options)


def _triton_endpoints(config: Config) -> list[dict[str, Any]]:
    """Configured Triton endpoints with the live state of the pools loaded in this process."""
    from engines.backends import endpoint_states

    rows = [{"url": s.url, "model": s.model, "healthy": "yes" if s.healthy else "no",
             "in_flight": f"{s.in_flight}/{s.max_inflight}", "latency_ms": f"{s.latency_seconds * 1e3:.1f}",
             "requests": s.requests, "errors": s.errors, "last_error": s.last_error} for s in endpoint_states()]
    seen = {r["url"] for r in rows}
    rows += [{"url": url, "model": "", "healthy": "no engine loaded", "in_flight": "", "latency_ms": "",
              "requests": "", "errors": "", "last_error": ""} for url in config.triton.endpoints if url not in seen]
    return rows


def _ago(at: float) -> str:
    if not at:
        return ""
    seconds = max(0.0, time.time() - at)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _done(request: Request, message: str, detail: dict[str, Any] | None = None) -> Response:
    if request.headers.get("authorization") or "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"ok": True, "message": message, **(detail or {})})
    return RedirectResponse(f"/engines?message={message}", status_code=303)


def _health(config: Config, store: StateStore, checks: Mapping[str, HealthCheck]) -> dict[str, Any]:
    """``/healthz``: the state store answers, the spool has room, and every extra check passes."""
    results: dict[str, bool] = {}
    try:
        store.ping()
        results["state_store"] = True
    except Exception:
        results["state_store"] = False
    free = free_bytes(config.data_dir)
    results["disk"] = free >= config.node.min_free_bytes
    for name, check in checks.items():
        try:
            results[name] = bool(check())
        except Exception:
            results[name] = False
    return {"ok": all(results.values()), "checks": results, "free_bytes": free}


def _delivery_rows(config: Config, store: StateStore) -> list[dict[str, Any]]:
    """Per configured destination: its target, rows per delivery state and the last error (scrubbed)."""
    return [
        {
            "name": dest.name,
            "kind": "DICOMweb (STOW-RS)" if dest.kind == "dicomweb" else "DIMSE (C-STORE)",
            "target": dest.url if dest.kind == "dicomweb" else f"{dest.ae_title}@{dest.host}:{dest.port}",
            **store.deliveries.count_by_state(dest.name),
            "last_error": scrub(store.deliveries.last_error(dest.name)),
        }
        for dest in config.destinations
    ]


def create_app(
    config: Config, store: StateStore, health_checks: Mapping[str, HealthCheck] | None = None
) -> FastAPI:
    """The dashboard app over ``store``; ``health_checks`` (name -> callable) join ``/healthz``."""
    app = FastAPI(title="Cancer-imaging appliance", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders)
    clear_uploads(config.data_dir)
    queue = JobQueue(store, config.worker.lease_seconds, config.worker.max_attempts)
    registry = metrics_registry(config, store)
    checks = dict(health_checks or {})

    def health() -> dict[str, Any]:
        return _health(config, store, checks)

    def engines_view() -> tuple[list[Any], dict[str, str], str]:
        try:
            reg = _registry(config, store)
            return reg.list(), reg.active_versions(), ""
        except Exception as exc:  # a broken registry must not take the dashboard down
            return [], {}, f"{type(exc).__name__}: {exc}"

    def overview() -> dict[str, Any]:
        counts = store.counts()
        pressure = backpressure(store, config.worker.max_queue)
        h = health()
        jobs = scrub_rows(queue.recent(limit=50, states=(JobState.RUNNING, JobState.QUEUED)))
        finished = scrub_rows(queue.recent(limit=30, states=(JobState.SUCCEEDED, JobState.FAILED)))
        _, active, engine_error = engines_view()
        return {
            "slots": SlotBoard(store).read(),
            "counts": counts,
            "pressure": pressure,
            "health": h,
            "free": _size(h["free_bytes"]),
            "min_free": _size(config.node.min_free_bytes),
            "spool_low": not h["checks"]["disk"],
            "jobs": jobs,
            "finished": finished,
            "deliveries": _delivery_rows(config, store),
            "failed_series": scrub_rows(store.series.failed_recent()),
            "active": active,
            "engine_error": engine_error,
            "triton": _triton_endpoints(config),
            "ingest": ingest_by_transport(),
            "config": config,
            "ago": _ago,
        }

    @app.get("/")
    def dashboard(request: Request) -> Response:
        return TEMPLATES.TemplateResponse(request, "dashboard.html", overview())

    @app.get("/engines")
    def engines_page(request: Request, message: str = "") -> Response:
        records, active, error = engines_view()
        context = {
            "records": records,
            "active": active,
            "engine_error": error,
            "message": message[:200],
            "token_configured": bool(config.web.token),
            "ago": _ago,
        }
        return TEMPLATES.TemplateResponse(request, "engines.html", context)

    @app.post("/engines/activate")
    async def activate(request: Request) -> Response:
        actor, form = await authenticate(config.web, request)
        task, version = form.get("task", ""), form.get("version", "")
        downgrade = _allow_downgrade(request, form)
        await run_in_threadpool(
            _call, lambda: _registry(config, store).activate(task, version, actor, allow_downgrade=downgrade))
        return _done(request, f"activated {task} {version}")

    @app.post("/engines/rollback")
    async def rollback(request: Request) -> Response:
        actor, form = await authenticate(config.web, request)
        task = form.get("task", "")
        version = await run_in_threadpool(_call, lambda: _registry(config, store).rollback(task, actor))
        return _done(request, f"rolled {task} back to {version}", {"version": version})

    @app.post("/engines/install")
    async def install(request: Request) -> Response:
        """Install a bundle: a ``.tar`` as the request body, or a ``bundle_path`` form field on this machine."""
        actor, form = await authenticate(config.web, request)
        downgrade = _allow_downgrade(request, form)
        if form or is_form(request):
            path = Path(form.get("bundle_path", ""))
            if not form.get("bundle_path") or not path.is_absolute() or not path.exists():
                raise HTTPException(400, "bundle_path must be the absolute path of a bundle directory or .tar "
                                         "on the appliance")
            manifest = await run_in_threadpool(
                _call, lambda: _registry(config, store).install(path, actor, allow_downgrade=downgrade))
        else:
            path = await receive_upload(request, config.data_dir, config.web.max_upload_bytes,
                                        config.node.min_free_bytes)
            try:
                manifest = await run_in_threadpool(
                    _call, lambda: _registry(config, store).install(path, actor, allow_downgrade=downgrade))
            finally:
                path.unlink(missing_ok=True)
        task, version = getattr(manifest, "task", "?"), getattr(manifest, "version", "?")
        return _done(request, f"installed {task} {version}", {"task": task, "version": version})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Response:
        h = health()
        return JSONResponse(h, status_code=200 if h["ok"] else 503)

    @app.get("/api/status")
    def api_status() -> Response:
        from appliance.status import collect_status

        report = collect_status(config)
        report["backpressure"] = backpressure(store, config.worker.max_queue)
        report["free_bytes"] = free_bytes(config.data_dir)
        return JSONResponse(json.loads(json.dumps(report, default=str)))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        headers = dict(exc.headers or {})
        if request.method not in ("GET", "HEAD"):
            headers.update(CLOSE)  # the body may be unread: close rather than drain it
        return PlainTextResponse(f"{exc.status_code}: {exc.detail}\n", status_code=exc.status_code,
                                 headers=headers)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> Response:
        # answered outside the middleware stack, so the security headers are set here too
        logger.error("dashboard request %s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return PlainTextResponse("500: internal error\n", status_code=500, headers={**SECURITY_HEADERS, **CLOSE})

    return app


def _allow_downgrade(request: Request, form: Mapping[str, str]) -> bool:
    """``allow_downgrade`` as a form field or query parameter (``1``, ``true``, ``yes``, ``on``)."""
    value = form.get("allow_downgrade") or request.query_params.get("allow_downgrade", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _call(func: Callable[[], Any]) -> Any:
    """Run a registry action; its errors become 400 with the registry's message."""
    from engines.errors import EngineError

    try:
        return func()
    except EngineError as exc:
        raise HTTPException(400, str(exc)) from None
