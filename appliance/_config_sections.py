"""How work runs: ``[[routes]]``, ``[delivery]``, ``[engines]``, ``[triton]``, ``[worker]``, ``[pathology]``,
``[web]``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from appliance._config_base import Section

__all__ = [
    "DeliverySettings", "EngineSettings", "PathologyConfig", "RouteSettings", "TritonSettings", "WebSettings",
    "WorkerSettings",
]


class RouteSettings(Section):
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


class DeliverySettings(Section):
    """Retries of result delivery (dicom_node SCU)."""

    initial_backoff_seconds: Annotated[float, Field(gt=0)] = 2.0
    max_backoff_seconds: Annotated[float, Field(gt=0)] = 300.0
    max_age_seconds: Annotated[float, Field(gt=0)] = 24 * 3600.0  #: then the delivery is dead
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0  #: association / DIMSE timeout


class EngineSettings(Section):
    """Engines: where trusted keys live and how the runtime runs."""

    trusted_keys_dir: Path | None = None  #: default: <data_dir>/trusted_keys
    cpu_threads: Annotated[int, Field(ge=0)] = 0  #: 0: ONNX Runtime chooses


class TritonSettings(Section):
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


class WorkerSettings(Section):
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


class PathologyConfig(Section):
    """The pathology pipeline ([pathology])."""

    #: Optical Path Identifier to read in a multi-path slide; "" the tile model card's, else the first
    optical_path: Annotated[str, Field(max_length=16)] = ""


class WebSettings(Section):
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
