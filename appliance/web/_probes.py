"""Machine-read endpoints: ``/metrics`` (Prometheus), ``/healthz`` (200 or 503) and ``/api/status`` (JSON)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appliance.jobs import backpressure
from appliance.status import collect_status
from appliance.web._context import Dashboard, dashboard_of
from appliance.web._metrics import free_bytes

__all__ = ["router"]

router = APIRouter()
Ctx = Annotated[Dashboard, Depends(dashboard_of)]


@router.get("/metrics")
def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz(ctx: Ctx) -> Response:
    h = ctx.health()
    return JSONResponse(h, status_code=200 if h["ok"] else 503)


@router.get("/api/status")
def api_status(ctx: Ctx) -> Response:
    report = collect_status(ctx.config)
    report["backpressure"] = backpressure(ctx.store, ctx.config.worker.max_queue)
    report["free_bytes"] = free_bytes(ctx.config.data_dir)
    return JSONResponse(json.loads(json.dumps(report, default=str)))
