"""Appliance configuration: one TOML file, validated at start (shared/DESIGN.md, "Configuration").

Every setting has a default that works on a laptop, so ``appliance demo`` and
``appliance serve`` need no file at all. Unknown keys are an error; a bad value
is rejected with a message naming the key and the value, never replaced by a
default.

The sections live in ``_config_base`` (AE titles, TLS), ``_config_ingest`` (node,
peers, STOW-RS listener), ``_config_destinations`` and ``_config_sections`` (routes,
delivery, engines, Triton, worker, pathology, web); every name is importable from here.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError, field_validator

from appliance._config_base import AeTitle, Section, TlsSettings
from appliance._config_destinations import DestinationSettings
from appliance._config_ingest import DicomwebClientSettings, DicomwebSettings, NodeSettings, PeerSettings
from appliance._config_sections import (
    DeliverySettings,
    EngineSettings,
    PathologyConfig,
    RouteSettings,
    TritonSettings,
    WebSettings,
    WorkerSettings,
)
from appliance.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH", "AeTitle", "Config", "DeliverySettings", "DestinationSettings", "DicomwebClientSettings",
    "DicomwebSettings", "EngineSettings", "NodeSettings", "PathologyConfig", "PeerSettings", "RouteSettings",
    "Section", "TlsSettings", "TritonSettings", "WebSettings", "WorkerSettings", "load_config", "parse_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/appliance/appliance.toml")


class Config(Section):
    """The whole configuration, frozen after load."""

    node: NodeSettings = NodeSettings()
    peers: tuple[PeerSettings, ...] = (
        PeerSettings(ae_title="SCANNER1", host="127.0.0.1"),
        PeerSettings(ae_title="STORESCU", host="127.0.0.1"),
    )
    destinations: tuple[DestinationSettings, ...] = ()
    routes: tuple[RouteSettings, ...] = (
        RouteSettings(pipeline="pathology", match={"Modality": "SM"}, stable_seconds=5),
        RouteSettings(pipeline="breast_mri", match={"Modality": "MR"}, stable_seconds=5),
    )
    delivery: DeliverySettings = DeliverySettings()
    engines: EngineSettings = EngineSettings()
    triton: TritonSettings = TritonSettings()
    worker: WorkerSettings = WorkerSettings()
    pathology: PathologyConfig = PathologyConfig()
    web: WebSettings = WebSettings()
    #: the STOW-RS listener; None (no ``[dicomweb]`` section): none
    dicomweb: DicomwebSettings | None = None

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: tuple[DestinationSettings, ...]) -> tuple[DestinationSettings, ...]:
        names = [d.name for d in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique, repeated: {', '.join(dupes)}")
        return value

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    @property
    def trusted_keys_dir(self) -> Path:
        return self.engines.trusted_keys_dir or self.node.data_dir / "trusted_keys"

    @property
    def engine_options(self) -> dict[str, Any]:
        """Options of ``engines.registry.Registry`` (the backends' settings) from ``[triton]``."""
        return {"triton_endpoints": self.triton.endpoints, "triton_max_inflight": self.triton.max_inflight,
                "triton_timeout": self.triton.timeout_seconds}

    def destination(self, name: str) -> DestinationSettings:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"unknown destination {name!r}; known: {known}")


#: keys whose values are never shown in an error message (credentials)
_SECRET_KEYS = frozenset({"token", "basic"})


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<redacted>" if k in _SECRET_KEYS and v else _redacted(v) for k, v in value.items()}
    return value


def _describe(error: ValidationError, data: dict[str, Any]) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        value: Any = data
        for part in item["loc"]:
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                value = None
                break
        if item["loc"] and item["loc"][-1] in _SECRET_KEYS:
            value = "<redacted>"
        shown = "" if item["type"] == "missing" else f" (got {_redacted(value)!r})"
        lines.append(f"{key}: {item['msg']}{shown}")
    return "; ".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a configuration mapping; raise ConfigError naming every bad key and value."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration in {source}: {_describe(exc, data)}") from None


def load_config(path: Path | str | None = None) -> Config:
    """Load the configuration from ``path``, ``$APPLIANCE_CONFIG``, the default path, or defaults.

    An explicitly named file that does not exist is an error; the default path is optional.
    """
    explicit = path if path is not None else os.environ.get("APPLIANCE_CONFIG") or None
    chosen = Path(explicit) if explicit else DEFAULT_CONFIG_PATH
    if not chosen.exists():
        if explicit:
            raise ConfigError(f"configuration file {str(chosen)!r} does not exist")
        return Config()
    try:
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {str(chosen)!r} is not valid TOML: {exc}") from None
    return parse_config(data, str(chosen))
