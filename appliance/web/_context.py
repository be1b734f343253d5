"""What the dashboard's handlers read: one :class:`Dashboard` per app, held in ``app.state``.

It gathers the views the pages and probes show (health, engines, the overview)
from the state store, the engine registry and this process's Triton pools;
the handlers in ``_pages``, ``_engine_routes`` and ``_probes`` only render them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from prometheus_client import CollectorRegistry

from appliance.config import Config
from appliance.jobs import JobQueue, backpressure
from appliance.slots import SlotBoard
from appliance.state import JobState, StateStore
from appliance.web._metrics import free_bytes, ingest_by_transport, metrics_registry
from appliance.web._scrub import scrub, scrub_rows

__all__ = ["Dashboard", "HealthCheck", "ago", "dashboard_of", "size"]

HealthCheck = Callable[[], bool]


def ago(at: float) -> str:
    """``at`` (epoch seconds) as "12 s ago", "5 min ago" or "1.5 h ago"; empty when unset."""
    if not at:
        return ""
    seconds = max(0.0, time.time() - at)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def size(n: float) -> str:
    """A byte count in B, KB, MB, GB or TB with one decimal."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


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


@dataclass
class Dashboard:
    """The configuration, state store and extra health checks one dashboard app serves."""

    config: Config
    store: StateStore
    checks: Mapping[str, HealthCheck] = field(default_factory=dict)

    def __post_init__(self) -> None:
        worker = self.config.worker
        self.queue = JobQueue(self.store, worker.lease_seconds, worker.max_attempts)
        self.metrics: CollectorRegistry = metrics_registry(self.config, self.store)

    def registry(self) -> Any:
        """The engine registry (opened per request: installs from the CLI show up at once)."""
        from engines.registry import Registry

        config = self.config
        return Registry(config.data_dir / "engines", config.trusted_keys_dir, audit=self.store.audit,
                        **config.engine_options)

    def health(self) -> dict[str, Any]:
        """``/healthz``: the state store answers, the spool has room, and every extra check passes."""
        results: dict[str, bool] = {}
        try:
            self.store.ping()
            results["state_store"] = True
        except Exception:
            results["state_store"] = False
        free = free_bytes(self.config.data_dir)
        results["disk"] = free >= self.config.node.min_free_bytes
        for name, check in self.checks.items():
            try:
                results[name] = bool(check())
            except Exception:
                results[name] = False
        return {"ok": all(results.values()), "checks": results, "free_bytes": free}

    def engines_view(self) -> tuple[list[Any], dict[str, str], str]:
        """Installed engines, the active version per task, and the registry's error (empty when it opened)."""
        try:
            reg = self.registry()
            return reg.list(), reg.active_versions(), ""
        except Exception as exc:  # a broken registry must not take the dashboard down
            return [], {}, f"{type(exc).__name__}: {exc}"

    def overview(self) -> dict[str, Any]:
        """The dashboard page's template context."""
        config, store = self.config, self.store
        h = self.health()
        _, active, engine_error = self.engines_view()
        return {
            "slots": SlotBoard(store).read(),
            "counts": store.counts(),
            "pressure": backpressure(store, config.worker.max_queue),
            "health": h,
            "free": size(h["free_bytes"]),
            "min_free": size(config.node.min_free_bytes),
            "spool_low": not h["checks"]["disk"],
            "jobs": scrub_rows(self.queue.recent(limit=50, states=(JobState.RUNNING, JobState.QUEUED))),
            "finished": scrub_rows(self.queue.recent(limit=30, states=(JobState.SUCCEEDED, JobState.FAILED))),
            "deliveries": _delivery_rows(config, store),
            "failed_series": scrub_rows(store.series.failed_recent()),
            "active": active,
            "engine_error": engine_error,
            "triton": _triton_endpoints(config),
            "ingest": ingest_by_transport(),
            "config": config,
            "ago": ago,
        }


async def dashboard_of(request: Request) -> Dashboard:
    """The :class:`Dashboard` of the app serving ``request`` (a FastAPI dependency)."""
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard
