"""The status report shared by ``appliance status`` and the dashboard."""

from __future__ import annotations

from typing import Any

from appliance.config import Config
from appliance.state import StateStore


def active_engines(config: Config) -> dict[str, str]:
    """Task -> active version, from the engine registry under ``data_dir/engines``."""
    from engines.registry import Registry

    return Registry(config.data_dir / "engines", config.trusted_keys_dir).active_versions()


def collect_status(config: Config) -> dict[str, Any]:
    """``{"instances", "studies", "jobs", "deliveries", "engines"}`` as documented in the README."""
    store = StateStore.for_data_dir(config.data_dir)
    try:
        report = store.counts()
    finally:
        store.close()
    report["engines"] = active_engines(config)
    return report
