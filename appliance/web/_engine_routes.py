"""Engine management over HTTP: ``POST /engines/activate``, ``/engines/rollback``, ``/engines/install``.

Each needs ``[web] token`` (checked by :func:`appliance.web._guard.authenticate`
before any body byte is read); the registry's errors become 400 with its message.
Browsers get a redirect to ``/engines``, API clients a JSON answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response

from appliance.web._context import Dashboard, dashboard_of
from appliance.web._guard import authenticate, is_form, receive_upload
from engines.errors import EngineError

__all__ = ["router"]

router = APIRouter()
Ctx = Annotated[Dashboard, Depends(dashboard_of)]


@router.post("/engines/activate")
async def activate(request: Request, ctx: Ctx) -> Response:
    actor, form = await authenticate(ctx.config.web, request)
    task, version = form.get("task", ""), form.get("version", "")
    downgrade = _allow_downgrade(request, form)
    await run_in_threadpool(
        _call, lambda: ctx.registry().activate(task, version, actor, allow_downgrade=downgrade))
    return _done(request, f"activated {task} {version}")


@router.post("/engines/rollback")
async def rollback(request: Request, ctx: Ctx) -> Response:
    actor, form = await authenticate(ctx.config.web, request)
    task = form.get("task", "")
    version = await run_in_threadpool(_call, lambda: ctx.registry().rollback(task, actor))
    return _done(request, f"rolled {task} back to {version}", {"version": version})


@router.post("/engines/install")
async def install(request: Request, ctx: Ctx) -> Response:
    """Install a bundle: a ``.tar`` as the request body, or a ``bundle_path`` form field on this machine."""
    actor, form = await authenticate(ctx.config.web, request)
    downgrade = _allow_downgrade(request, form)
    if form or is_form(request):
        manifest = await _install_path(ctx, form.get("bundle_path", ""), actor, downgrade)
    else:
        manifest = await _install_upload(ctx, request, actor, downgrade)
    task, version = getattr(manifest, "task", "?"), getattr(manifest, "version", "?")
    return _done(request, f"installed {task} {version}", {"task": task, "version": version})


async def _install_path(ctx: Dashboard, bundle_path: str, actor: str, downgrade: bool) -> Any:
    """Install the bundle at ``bundle_path``, an absolute path on the appliance."""
    path = Path(bundle_path)
    if not bundle_path or not path.is_absolute() or not path.exists():
        raise HTTPException(400, "bundle_path must be the absolute path of a bundle directory or .tar "
                                 "on the appliance")
    return await run_in_threadpool(
        _call, lambda: ctx.registry().install(path, actor, allow_downgrade=downgrade))


async def _install_upload(ctx: Dashboard, request: Request, actor: str, downgrade: bool) -> Any:
    """Stream the request body (a bundle ``.tar``) to disk, install it, and remove the upload."""
    config = ctx.config
    path = await receive_upload(request, config.data_dir, config.web.max_upload_bytes, config.node.min_free_bytes)
    try:
        return await run_in_threadpool(
            _call, lambda: ctx.registry().install(path, actor, allow_downgrade=downgrade))
    finally:
        path.unlink(missing_ok=True)


def _done(request: Request, message: str, detail: dict[str, Any] | None = None) -> Response:
    if request.headers.get("authorization") or "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"ok": True, "message": message, **(detail or {})})
    return RedirectResponse(f"/engines?message={message}", status_code=303)


def _allow_downgrade(request: Request, form: Mapping[str, str]) -> bool:
    """``allow_downgrade`` as a form field or query parameter (``1``, ``true``, ``yes``, ``on``)."""
    value = form.get("allow_downgrade") or request.query_params.get("allow_downgrade", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _call(func: Callable[[], Any]) -> Any:
    """Run a registry action; its errors become 400 with the registry's message."""
    try:
        return func()
    except EngineError as exc:
        raise HTTPException(400, str(exc)) from None
