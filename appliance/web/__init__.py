"""The dashboard, metrics and health endpoints (FastAPI, server-rendered, no patient data)."""

from appliance.web._scrub import scrub
from appliance.web.app import create_app
from appliance.web.server import WebServer, web_component

__all__ = ["WebServer", "create_app", "scrub", "web_component"]
