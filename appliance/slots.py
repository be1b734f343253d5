"""Device slots: what the scheduler runs jobs on, and the board that shows them.

A slot is one device (``cpu`` or ``cuda:N`` from ``[worker] devices``) with its
own worker thread and its own engine sessions, or the remote slot whose jobs
run on a Triton pool (no local device; as many lanes as the pool can take).
The :class:`SlotBoard` keeps one row per slot in the state store (its job,
busy time, preemptions, resumes) so the dashboard, ``/metrics`` and
``appliance status`` read the same figures from any process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.jobs import Job
from appliance.state import StateStore

__all__ = ["DEVICE_RE", "REMOTE", "Device", "SlotBoard", "default_devices", "plan_devices"]

logger = logging.getLogger(__name__)

DEVICE_RE = re.compile(r"^(cpu|cuda:\d+)$")
REMOTE = "remote"  #: the device name of the remote (Triton) slot
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class Device:
    """One scheduling slot's device."""

    slot: str  #: ``slot0``, ``slot1``, ... in configuration order; ``remote0``, ... for remote lanes
    name: str  #: ``cpu``, ``cuda:N`` or ``remote``
    cpu_threads: int = 0  #: intra-op threads of its CPU sessions (0: the runtime chooses)
    memory_budget: int = 0  #: bytes of device memory its engines may declare (0: no limit)

    @property
    def kind(self) -> str:
        """``cpu``, ``cuda`` or ``remote``."""
        return self.name.partition(":")[0]


def default_devices() -> tuple[str, ...]:
    """One slot: the first GPU when the NVIDIA driver lists one and a GPU runtime is installed, else ``cpu``."""
    try:
        has_gpu = _NVIDIA_GPUS.is_dir() and any(_NVIDIA_GPUS.iterdir())
    except OSError:
        has_gpu = False
    if has_gpu and _gpu_runtime():
        return ("cuda:0",)
    return ("cpu",)


def _gpu_runtime() -> bool:
    if importlib.util.find_spec("tensorrt") is not None:
        return True
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def plan_devices(names: Sequence[str], cpu_threads: int = 0, memory_budget: int = 0) -> list[Device]:
    """The local slots for ``names`` (default: :func:`default_devices`), CPU threads shared among ``cpu`` slots.

    ``cpu_threads`` (``[engines] cpu_threads``) 0 gives each ``cpu`` slot an equal share of the
    machine's cores, so two CPU slots do not both take every core.
    """
    chosen = tuple(names) or default_devices()
    for name in chosen:
        if not DEVICE_RE.match(name):
            raise ValueError(f"device {name!r} must be 'cpu' or 'cuda:N'")
    cpu_slots = sum(1 for name in chosen if name == "cpu")
    share = cpu_threads or max(1, (os.cpu_count() or 1) // max(1, cpu_slots))
    return [
        Device(f"slot{i}", name, share if name == "cpu" else cpu_threads, 0 if name == "cpu" else memory_budget)
        for i, name in enumerate(chosen)
    ]


class SlotBoard:
    """The ``slots`` table: one row per slot, written when its jobs start and end (implements SlotMonitor)."""

    def __init__(self, store: StateStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def register(self, devices: Sequence[Device], replace: bool = True) -> None:
        """Rows for ``devices`` (the previous process's rows go first when ``replace``)."""
        self.store.slots.register([(device.slot, device.name) for device in devices], self.clock(), replace)

    def job_started(self, slot: str, job: Job) -> None:
        resumed = 1 if job.preemptions > 0 or job.progress_done > 0 else 0
        if resumed:
            logger.info("job %s resumes on %s (%d of %d units done before)", job.id, slot, job.progress_done,
                        job.progress_total)
        self.store.slots.started(slot, job.id, self.clock(), bool(resumed))

    def job_ended(self, slot: str, job: Job, outcome: str | None) -> None:
        self.store.slots.ended(slot, job.id, self.clock(), outcome == "preempted")

    def read(self) -> list[dict[str, Any]]:
        """Every slot with its job's pipeline, priority and progress and its busy fraction since it came up."""
        now = self.clock()
        rows = self.store.slots.with_jobs()
        for row in rows:
            busy = float(row["busy_seconds"]) + (now - float(row["busy_since"]) if row["busy_since"] else 0.0)
            up = max(1e-9, now - float(row["up_since"]))
            row["busy"] = bool(row["job_id"])
            row["utilisation"] = min(1.0, max(0.0, busy / up))
        return rows
