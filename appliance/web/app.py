"""The dashboard: server-rendered pages, ``/metrics``, ``/healthz`` and ``/api/status``.

Pages show only opaque job ids, states, counts and engine versions, never a
patient's name, id, birth date or accession number (invariant 4); they read
the state store's rows, never the spooled files. Changes (engine install,
activate, rollback) need ``[web] token``, as ``Authorization: Bearer TOKEN``
or a ``token`` form field; with no token configured they are refused.
"""

from __future__ import annotations

import hmac
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appliance.config import Config
from appliance.jobs import JobQueue, backpressure
from appliance.slots import SlotBoard
from appliance.state import StateStore
from appliance.web._metrics import free_bytes, metrics_registry

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
MAX_BUNDLE_BYTES = 4 * 1024**3
HealthCheck = Callable[[], bool]


def _registry(config: Config, store: StateStore) -> Any:
    from engines.registry import Registry

    return Registry(config.data_dir / "engines", config.trusted_keys_dir, audit=store.audit)


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


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (first value of each field)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = (await request.body()).decode("utf-8", errors="replace")
    return {key: values[0] for key, values in parse_qs(body).items()}


def _check_token(config: Config, request: Request, form: Mapping[str, str]) -> str:
    """The actor name when the request carries the configured token; 401/403 otherwise."""
    expected = config.web.token
    if not expected:
        raise HTTPException(403, "changes are disabled: no [web] token is configured")
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else form.get("token", "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "a valid token is required for changes", headers={"WWW-Authenticate": "Bearer"})
    client = request.client.host if request.client else "unknown"
    return f"web:{client}"


def _done(request: Request, message: str, detail: dict[str, Any] | None = None) -> Response:
    if request.headers.get("authorization") or "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"ok": True, "message": message, **(detail or {})})
    return RedirectResponse(f"/engines?message={message}", status_code=303)


def create_app(
    config: Config, store: StateStore, health_checks: Mapping[str, HealthCheck] | None = None
) -> FastAPI:
    """The dashboard app over ``store``; ``health_checks`` (name -> callable) join ``/healthz``."""
    app = FastAPI(title="Cancer-imaging appliance", docs_url=None, redoc_url=None, openapi_url=None)
    queue = JobQueue(store, config.worker.lease_seconds, config.worker.max_attempts)
    registry = metrics_registry(config, store)
    checks = dict(health_checks or {})

    def health() -> dict[str, Any]:
        results: dict[str, bool] = {}
        try:
            store.query("select 1")
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
        jobs = queue.recent(limit=50, states=("running", "queued"))
        finished = queue.recent(limit=30, states=("succeeded", "failed"))
        deliveries = []
        for dest in config.destinations:
            rows = store.query(
                "select state, count(*) as n from deliveries where destination = ? group by state", (dest.name,)
            )
            by_state = {r["state"]: r["n"] for r in rows}
            last = store.query(
                "select last_error, max(coalesce(delivered_at, 0), coalesce(next_attempt_at, 0)) as at"
                " from deliveries where destination = ? and coalesce(last_error, '') != ''"
                " order by id desc limit 1",
                (dest.name,),
            )
            deliveries.append(
                {
                    "name": dest.name,
                    "target": f"{dest.ae_title}@{dest.host}:{dest.port}",
                    "pending": by_state.get("pending", 0),
                    "delivered": by_state.get("delivered", 0),
                    "dead": by_state.get("dead", 0),
                    "last_error": last[0]["last_error"] if last else "",
                }
            )
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
            "deliveries": deliveries,
            "active": active,
            "engine_error": engine_error,
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
        form = await _form(request)
        actor = _check_token(config, request, form)
        task, version = form.get("task", ""), form.get("version", "")
        await run_in_threadpool(_call, lambda: _registry(config, store).activate(task, version, actor))
        return _done(request, f"activated {task} {version}")

    @app.post("/engines/rollback")
    async def rollback(request: Request) -> Response:
        form = await _form(request)
        actor = _check_token(config, request, form)
        task = form.get("task", "")
        version = await run_in_threadpool(_call, lambda: _registry(config, store).rollback(task, actor))
        return _done(request, f"rolled {task} back to {version}", {"version": version})

    @app.post("/engines/install")
    async def install(request: Request) -> Response:
        """Install a bundle: a ``.tar`` as the request body, or a ``bundle_path`` form field on this machine."""
        content_type = request.headers.get("content-type", "")
        form = await _form(request)
        actor = _check_token(config, request, form)
        if content_type.startswith("application/x-www-form-urlencoded"):
            path = Path(form.get("bundle_path", ""))
            if not form.get("bundle_path") or not path.exists():
                raise HTTPException(400, f"bundle_path {str(path)!r} does not exist on the appliance")
            manifest = await run_in_threadpool(_call, lambda: _registry(config, store).install(path, actor))
        else:
            body = await request.body()
            if not body or len(body) > MAX_BUNDLE_BYTES:
                raise HTTPException(400, f"the body must be a bundle .tar of 1 to {MAX_BUNDLE_BYTES} bytes")
            with tempfile.TemporaryDirectory(prefix="bundle-", dir=_staging(config)) as tmp:
                path = Path(tmp) / "bundle.tar"
                path.write_bytes(body)
                manifest = await run_in_threadpool(_call, lambda: _registry(config, store).install(path, actor))
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
        return PlainTextResponse(f"{exc.status_code}: {exc.detail}\n", status_code=exc.status_code,
                                 headers=exc.headers)

    return app


def _staging(config: Config) -> Path:
    path = config.data_dir / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _call(func: Callable[[], Any]) -> Any:
    """Run a registry action; its errors become 400 with the registry's message."""
    from engines.errors import EngineError

    try:
        return func()
    except EngineError as exc:
        raise HTTPException(400, str(exc)) from None
