"""Appliance configuration: one TOML file, validated at start (shared/DESIGN.md, "Configuration").

Every setting has a default that works on a laptop, so ``appliance demo`` and
``appliance serve`` need no file at all. Unknown keys are an error; a bad value
is rejected with a message naming the key and the value, never replaced by a
default.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliance.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/appliance/appliance.toml")
_AE_TITLE = re.compile(r"^[ -~]{1,16}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or value.strip() == "" or "\\" in value:
        raise ValueError(f"AE title {value!r} must be 1-16 printable ASCII characters, not only spaces, no backslash")
    return value.strip()


AeTitle = Annotated[str, AfterValidator(_check_ae_title)]


class TlsSettings(_Section):
    """TLS for every association; all three empty means no TLS."""

    cert: str = ""  #: PEM certificate of this node
    key: str = ""  #: PEM private key of this node
    ca: str = ""  #: PEM bundle of CAs whose peers we trust (peers must present a certificate)

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    @field_validator("cert", "key", "ca")
    @classmethod
    def _exists(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"TLS file {value!r} does not exist")
        return value


class NodeSettings(_Section):
    """The DICOM node: who we are and where we keep data."""

    ae_title: AeTitle = "APPLIANCE"  #: our AE title; the called AE title must match it
    host: str = "127.0.0.1"  #: address the storage SCP listens on
    port: Annotated[int, Field(ge=1, le=65535)] = 11112  #: port the storage SCP listens on
    data_dir: Path = Path("./var")  #: spool, outbox, state.db, engines
    min_free_bytes: Annotated[int, Field(ge=0)] = 1_000_000_000  #: below this, C-STORE answers 0xA700
    max_pdu: Annotated[int, Field(ge=0)] = 0  #: maximum PDU we receive; 0 means unlimited
    tls: TlsSettings = TlsSettings()

    @field_validator("tls")
    @classmethod
    def _tls_complete(cls, value: TlsSettings) -> TlsSettings:
        if value.enabled and not (value.cert and value.key):
            raise ValueError("TLS needs both 'cert' and 'key' when any TLS file is set")
        return value


class PeerSettings(_Section):
    """A peer allowed to associate with us (calling AE title, optional address)."""

    ae_title: AeTitle
    host: str = ""  #: empty: any address


class DestinationSettings(_Section):
    """A PACS (or other storage SCP) that receives our results."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    ae_title: AeTitle
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 104
    tls: bool = False  #: use the node's TLS settings for this destination


class RouteSettings(_Section):
    """A routing rule: first match wins (tag keyword -> exact value or ``re:<regex>``)."""

    pipeline: Literal["pathology", "breast_mri"]
    match: dict[str, str] = Field(default_factory=dict)
    stable_seconds: Annotated[float, Field(ge=0)] = 30.0  #: a series is complete after this quiet time
    required_series: tuple[str, ...] = ()  #: Series Descriptions (or re:) that must all be present
    force_complete_seconds: Annotated[float, Field(ge=0)] = 0.0  #: 0: never force
    priority: Annotated[int, Field(ge=0, le=9)] = 5  #: lower runs first; 0 is urgent

    @field_validator("match")
    @classmethod
    def _regexes_compile(cls, value: dict[str, str]) -> dict[str, str]:
        from pydicom.datadict import tag_for_keyword

        for keyword, pattern in value.items():
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"{keyword!r} is not a DICOM keyword")
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"regex {pattern!r} for {keyword} does not compile: {exc}") from exc
        return value


class DeliverySettings(_Section):
    """Retries of result delivery (dicom_node SCU)."""

    initial_backoff_seconds: Annotated[float, Field(gt=0)] = 2.0
    max_backoff_seconds: Annotated[float, Field(gt=0)] = 300.0
    max_age_seconds: Annotated[float, Field(gt=0)] = 24 * 3600.0  #: then the delivery is dead
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0  #: association / DIMSE timeout


class EngineSettings(_Section):
    """Engines: where trusted keys live and how the runtime runs."""

    trusted_keys_dir: Path | None = None  #: default: <data_dir>/trusted_keys
    cpu_threads: Annotated[int, Field(ge=0)] = 0  #: 0: ONNX Runtime chooses


class WorkerSettings(_Section):
    """The job scheduler and worker."""

    lease_seconds: Annotated[float, Field(gt=0)] = 60.0
    max_attempts: Annotated[int, Field(ge=1)] = 3
    max_queue: Annotated[int, Field(ge=1)] = 1000  #: backpressure above this many queued jobs
    batch_size: Annotated[int, Field(ge=1)] = 32
    #: scheduling slots, one worker and one set of engine sessions each ("cpu", "cuda:N"; a device may repeat);
    #: empty: one slot, the first GPU when present, else "cpu"
    devices: tuple[str, ...] = ()
    preemption: bool = True  #: an urgent queued job makes a less urgent running one yield at its next batch
    #: a job that has spent this long back in the queue after yielding is not preempted again (no starvation)
    max_wait_seconds: Annotated[float, Field(ge=0)] = 1800.0
    #: GPU memory (MiB) a cuda slot's engines may declare (manifest ``device_memory_size``); 0: no limit
    device_memory_budget_mb: Annotated[int, Field(ge=0)] = 0

    @field_validator("devices")
    @classmethod
    def _devices_named(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.match(r"^(cpu|cuda:\d+)$", name):
                raise ValueError(f"device {name!r} must be 'cpu' or 'cuda:N' (N the CUDA device number)")
        return value


class WebSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    token: str = ""  #: empty: read-only pages only, no engine upload


class Config(_Section):
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
    worker: WorkerSettings = WorkerSettings()
    web: WebSettings = WebSettings()

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

    def destination(self, name: str) -> DestinationSettings:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"unknown destination {name!r}; known: {known}")


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
        shown = "" if item["type"] == "missing" else f" (got {value!r})"
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
