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
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic import ValidationInfo
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

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
    #: maximum PDU length we announce and enforce (PS3.8 D.1); a longer PDU is refused from its header
    max_pdu: Annotated[int, Field(ge=4096, le=1 << 26)] = 262_144
    tls: TlsSettings = TlsSettings()
    #: longest A-ASSOCIATE-RQ (or other non-P-DATA PDU) read, before AE titles are checked
    max_associate_rq: Annotated[int, Field(ge=1024, le=1 << 24)] = 65_536
    pdu_read_timeout: Annotated[float, Field(gt=0)] = 30.0  #: seconds for a started PDU to arrive whole
    artim_timeout: Annotated[float, Field(gt=0)] = 30.0  #: seconds for the first PDU after connect (ARTIM)
    idle_timeout: Annotated[float, Field(gt=0)] = 60.0  #: seconds an association may be silent between messages
    tls_handshake_timeout: Annotated[float, Field(gt=0)] = 10.0  #: seconds for a TLS handshake
    max_connections: Annotated[int, Field(ge=1)] = 64  #: open DICOM connections in total
    max_connections_per_source: Annotated[int, Field(ge=1)] = 16  #: open DICOM connections from one address
    listen_backlog: Annotated[int, Field(ge=1, le=65535)] = 128  #: pending connections the kernel queues
    #: data-set bytes of one instance of a SOP class not in ``max_dataset_bytes_by_sop_class``
    max_dataset_bytes: Annotated[int, Field(ge=1024)] = 1 << 30
    #: data-set limit per SOP Class UID, over the defaults (a whole-slide instance may reach 4 GiB)
    max_dataset_bytes_by_sop_class: dict[str, Annotated[int, Field(ge=1024)]] = Field(
        default_factory=lambda: {str(VLWholeSlideMicroscopyImageStorage): 4 << 30}
    )
    max_inflated_bytes: Annotated[int, Field(ge=1024)] = 1 << 30  #: inflated size of a deflated data set
    max_inflate_ratio: Annotated[float, Field(ge=2)] = 100.0  #: inflated / received bytes (past 16 MiB)
    max_sequence_depth: Annotated[int, Field(ge=1, le=128)] = 32  #: nesting of sequences in a data set

    @field_validator("max_dataset_bytes_by_sop_class")
    @classmethod
    def _sop_classes_are_uids(cls, value: dict[str, int]) -> dict[str, int]:
        from dicom_node.uids import is_valid_uid

        for uid in value:
            if not is_valid_uid(uid):
                raise ValueError(f"{uid!r} in max_dataset_bytes_by_sop_class is not a SOP Class UID")
        return value

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


#: the keys of each kind of destination; a key of the other kind is an error, never silently ignored
_DIMSE_KEYS = frozenset({"ae_title", "host", "port", "tls"})
_DICOMWEB_KEYS = frozenset({"url", "token", "basic", "cert", "key", "ca"})


class DestinationSettings(_Section):
    """A PACS that receives our results: a storage SCP (``kind = "dimse"``) or a DICOMweb service (STOW-RS)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    kind: Literal["dimse", "dicomweb"] = "dimse"  #: C-STORE to a storage SCP, or STOW-RS to a DICOMweb service
    ae_title: AeTitle | None = None  #: dimse: the called AE title (required)
    host: str = "127.0.0.1"  #: dimse
    port: Annotated[int, Field(ge=1, le=65535)] = 104  #: dimse
    tls: bool = False  #: dimse: use the node's TLS settings for this destination
    #: dicomweb (required): the service's base URL, http(s)://host[:port]/path, to which ``/studies`` is added
    url: str = ""
    token: str = Field(default="", repr=False)  #: dicomweb: sent as ``Authorization: Bearer <token>``
    basic: str = Field(default="", repr=False)  #: dicomweb: ``user:password`` for HTTP basic authentication
    cert: str = ""  #: dicomweb: PEM client certificate (https only)
    key: str = ""  #: dicomweb: PEM private key of ``cert`` (empty: the key is in ``cert``)
    ca: str = ""  #: dicomweb: PEM bundle of CAs to trust for https (empty: the system's)

    @model_validator(mode="before")
    @classmethod
    def _keys_of_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("kind", "dimse") not in ("dimse", "dicomweb"):
            return data  # the field validators name a wrong type or kind
        kind = data.get("kind", "dimse")
        own, other = (_DICOMWEB_KEYS, _DIMSE_KEYS) if kind == "dicomweb" else (_DIMSE_KEYS, _DICOMWEB_KEYS)
        wrong = sorted(other & data.keys())
        if wrong:
            raise ValueError(
                f"destination {data.get('name')!r} of kind {kind!r} does not take {', '.join(wrong)} "
                f"(its keys are name, kind, {', '.join(sorted(own))})"
            )
        required = "url" if kind == "dicomweb" else "ae_title"
        if required not in data:
            raise ValueError(f"destination {data.get('name')!r} of kind {kind!r} needs {required!r}")
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"DICOMweb url {value!r} must be http(s)://host[:port]/path")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(
                f"DICOMweb url of host {parts.hostname!r} must carry no user, password, query or fragment "
                "(credentials go in token, basic or cert)"
            )
        try:
            parts.port
        except ValueError:
            raise ValueError(f"DICOMweb url {value!r} has an invalid port") from None
        return value.rstrip("/")

    @field_validator("token", "basic")
    @classmethod
    def _printable(cls, value: str, info: ValidationInfo) -> str:
        if value and (not value.isprintable() or value != value.strip()):
            raise ValueError(f"{info.field_name} must be printable, without spaces around it")
        if info.field_name == "basic" and value and (":" not in value or value.startswith(":")):
            raise ValueError("basic must be 'user:password' (a non-empty user, a colon, the password)")
        return value

    @field_validator("cert", "key", "ca")
    @classmethod
    def _file_exists(cls, value: str, info: ValidationInfo) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"{info.field_name} file {value!r} does not exist")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> DestinationSettings:
        if self.token and self.basic:
            raise ValueError(f"destination {self.name!r}: give token or basic, not both")
        if self.key and not self.cert:
            raise ValueError(f"destination {self.name!r}: key {self.key!r} needs cert")
        if (self.cert or self.ca) and urlsplit(self.url).scheme != "https":
            raise ValueError(f"destination {self.name!r}: cert and ca need an https url, got {self.url!r}")
        return self


class RouteSettings(_Section):
    """A routing rule: first match wins (tag keyword -> exact value or ``re:<regex>``)."""

    pipeline: Literal["pathology", "breast_mri"]
    match: dict[str, str] = Field(default_factory=dict)
    stable_seconds: Annotated[float, Field(ge=0)] = 30.0  #: a series is complete after this quiet time
    required_series: tuple[str, ...] = ()  #: Series Descriptions (or re:) that must all be present
    force_complete_seconds: Annotated[float, Field(ge=0)] = 0.0  #: 0: never force
    priority: Annotated[int, Field(ge=0, le=9)] = 5  #: lower runs first; 0 is urgent
    #: a job failing for a reason in the study sends an "AI result not available" SR with the reason
    failure_report: bool = True

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


class TritonSettings(_Section):
    """A pool of remote Triton Inference Servers serving the Triton bundles (failover, several in flight)."""

    endpoints: tuple[str, ...] = ()  #: grpc://HOST:PORT or http://HOST:PORT (binary tensors); empty: each bundle's url
    max_inflight: Annotated[int, Field(ge=1, le=64)] = 4  #: requests in flight per endpoint
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0  #: per request; an endpoint slower than this is taken out

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from engines.backends import parse_endpoint

        for url in value:
            parse_endpoint(url)  # ValueError names the URL and the valid forms
        if len(set(value)) != len(value):
            raise ValueError(f"Triton endpoints must be unique, got {list(value)}")
        return value


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
    #: tile embeddings of a slide beyond this many MB go to a disk-backed array (the job's work directory)
    memory_budget_mb: Annotated[int, Field(ge=0)] = 512

    @field_validator("devices")
    @classmethod
    def _devices_named(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.match(r"^(cpu|cuda:\d+)$", name):
                raise ValueError(f"device {name!r} must be 'cpu' or 'cuda:N' (N the CUDA device number)")
        return value


class PathologyConfig(_Section):
    """The pathology pipeline ([pathology])."""

    #: Optical Path Identifier to read in a multi-path slide; "" the tile model card's, else the first
    optical_path: Annotated[str, Field(max_length=16)] = ""


class WebSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    token: str = ""  #: empty: read-only pages only, no engine upload
    #: largest form body (activate, roll back, install by path); the only body read before the token
    #: check, and only when it carries the token field; larger: 413, or 401 unread without a Bearer header
    max_form_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 64 * 1024
    #: largest bundle .tar uploaded to /engines/install, streamed to <data_dir>/uploads; larger: 413
    max_upload_bytes: Annotated[int, Field(ge=1)] = 4 * 1024**3
    #: most dashboard connections open at once; more are closed as they are accepted
    max_connections: Annotated[int, Field(ge=1)] = 64
    #: a connection that has not sent its request head within this many seconds is closed
    header_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0


class DicomwebClientSettings(_Section):
    """A DICOMweb client allowed to store by STOW-RS (the DICOMweb counterpart of ``[[peers]]``)."""

    #: the client's name in logs, records and the stored files' Source AE Title
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,16}$")]
    #: the bearer token it sends (``Authorization: Bearer <token>``); at least 16 characters
    token: Annotated[str, Field(min_length=16, pattern=r"^[!-~]+$")]


class DicomwebSettings(_Section):
    """The STOW-RS listener (PS3.18 10.5); the section absent: no listener."""

    host: str = "127.0.0.1"  #: address the STOW-RS listener binds
    port: Annotated[int, Field(ge=0, le=65535)] = 8081  #: its port (0: any free port)
    tls: TlsSettings = TlsSettings()  #: like ``[node] tls``; a ``ca`` requires client certificates
    #: who may store; each sends its token as a bearer token
    clients: tuple[DicomwebClientSettings, ...] = ()
    #: refuse (401) requests without a listed client's token; false only on a trusted network
    require_token: bool = True
    #: body bytes of one request; more is refused with 413
    max_request_bytes: Annotated[int, Field(ge=1024)] = 16 << 30
    #: seconds a request body may stall before it is dropped (408)
    idle_timeout: Annotated[float, Field(gt=0)] = 60.0
    #: open STOW-RS connections at once; more are answered 503
    max_connections: Annotated[int, Field(ge=1)] = 32

    @field_validator("tls")
    @classmethod
    def _tls_complete(cls, value: TlsSettings) -> TlsSettings:
        if value.enabled and not (value.cert and value.key):
            raise ValueError("TLS needs both 'cert' and 'key' when any TLS file is set")
        return value

    @field_validator("clients")
    @classmethod
    def _unique_clients(cls, value: tuple[DicomwebClientSettings, ...]) -> tuple[DicomwebClientSettings, ...]:
        names = [c.name for c in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dicomweb client names must be unique, repeated: {', '.join(dupes)}")
        tokens = [c.token for c in value]
        if len(set(tokens)) != len(tokens):
            raise ValueError("dicomweb client tokens must be unique (a token names its client)")
        return value

    @model_validator(mode="after")
    def _clients_when_required(self) -> "DicomwebSettings":
        if self.require_token and not self.clients:
            raise ValueError("require_token is true but no [[dicomweb.clients]] is listed: add a client, "
                             "or set require_token = false on a trusted network")
        return self


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
