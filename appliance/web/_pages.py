"""The dashboard's server-rendered pages: ``/`` (overview) and ``/engines`` (installed engines).

Pages show only opaque job ids, states, counts and engine versions, never a
patient's name, id, birth date or accession number (invariant 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from appliance.state import JobState
from appliance.web._context import Dashboard, ago, dashboard_of
from appliance.web._scrub import scrub

__all__ = ["TEMPLATES", "router"]

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.globals["JobState"] = JobState  # the templates compare states by the enum, not by literals
TEMPLATES.env.filters["scrub"] = scrub

router = APIRouter()
Ctx = Annotated[Dashboard, Depends(dashboard_of)]


@router.get("/")
def dashboard(request: Request, ctx: Ctx) -> Response:
    return TEMPLATES.TemplateResponse(request, "dashboard.html", ctx.overview())


@router.get("/engines")
def engines_page(request: Request, ctx: Ctx, message: str = "") -> Response:
    records, active, error = ctx.engines_view()
    context = {
        "records": records,
        "active": active,
        "engine_error": error,
        "message": message[:200],
        "token_configured": bool(ctx.config.web.token),
        "ago": ago,
    }
    return TEMPLATES.TemplateResponse(request, "engines.html", context)
