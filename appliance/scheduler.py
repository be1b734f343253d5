"""The scheduler: one worker per device slot, placement by engine, preemption at batch boundaries.

Each local device in ``[worker] devices`` (``cpu``, ``cuda:N``) is a slot with
its own :class:`~appliance.worker.Worker` thread and its own engine sessions.
A free slot leases the most urgent queued job it can run (:class:`Placement`:
the job's active engines run on its kind of device and fit its memory budget).
Jobs whose engines are remote (Triton) run on remote lanes instead, as many as
the pool reports it can take (``Engine.capacity``), not on a local device.

Preemption: when a queued job finds every slot that could run it busy with
less urgent work, the least urgent of those jobs (the one with the most work
left among equals) is asked to yield at its next batch boundary; it goes back
to the queue ahead of its peers (:meth:`~appliance.jobs.JobQueue.preempt`) and
the urgent job takes the slot. A job that has already spent more than
``max_wait_seconds`` back in the queue after yielding is not preempted again,
so a stream of urgent studies cannot starve a routine one for ever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.engine_cache import EngineCache, EngineSource
from appliance.jobs import Job, JobQueue
from appliance.slots import REMOTE, Device, SlotBoard
from appliance.state import StateStore
from appliance.worker import DeliverFn, PipelineFn, ReportFn, Worker, orphaned_lease
from engines.backends._base import GPU_BACKENDS, REMOTE_BACKENDS

__all__ = ["MAX_REMOTE_LANES", "Placement", "Requirement", "Scheduler"]

logger = logging.getLogger(__name__)

MAX_REMOTE_LANES = 16  #: upper bound on concurrent remote jobs, whatever the pool reports
PLACEMENT_TTL_SECONDS = 1.0  #: how long a placement computed from the registry is reused


@dataclass(frozen=True)
class Requirement:
    """What a pipeline's active engines need from a slot."""

    remote: bool = False  #: an engine runs on a remote server: the remote lanes run the job
    gpu: bool = False  #: an engine needs a CUDA device (TensorRT)
    memory: int = 0  #: device memory the engines declare (``device_memory_size``), bytes

    def fits(self, device: Device) -> bool:
        if device.kind == REMOTE:
            return self.remote
        if self.remote or (self.gpu and device.kind != "cuda"):
            return False
        return device.memory_budget == 0 or self.memory <= device.memory_budget


class Placement:
    """Which pipelines each slot can run now, from the tasks' active manifests (re-read every second)."""

    def __init__(self, source: object, tasks: Mapping[str, Sequence[str]], devices: Sequence[Device]) -> None:
        """``source`` reports ``active_manifest(task)`` (the registry); without it nothing is required."""
        self.source, self.tasks, self.devices = source, dict(tasks), list(devices)
        self._cache: tuple[float, dict[str, Requirement]] = (0.0, {})
        self._lock = threading.Lock()

    def requirements(self) -> dict[str, Requirement]:
        """Pipeline -> requirement; a pipeline without known tasks or active engines requires nothing."""
        now = time.monotonic()
        with self._lock:
            if now - self._cache[0] < PLACEMENT_TTL_SECONDS:
                return self._cache[1]
        reqs = {pipeline: self._requirement(tasks) for pipeline, tasks in self.tasks.items()}
        with self._lock:
            self._cache = (now, reqs)
        return reqs

    def _requirement(self, tasks: Sequence[str]) -> Requirement:
        describe = getattr(self.source, "active_manifest", None)
        remote = gpu = False
        memory = 0
        for task in tasks:
            manifest = describe(task) if describe is not None else None
            if manifest is None:
                continue
            remote |= manifest.backend_name in REMOTE_BACKENDS
            gpu |= manifest.backend_name in GPU_BACKENDS
            memory += int(manifest.backend.get("device_memory_size", 0) or 0)
        return Requirement(remote, gpu, memory)

    def needs_remote(self) -> bool:
        return any(req.remote for req in self.requirements().values())

    def excludes(self, device: Device) -> set[str]:
        """The pipelines ``device`` must not run (others, unknown ones included, it may lease).

        A pipeline no local slot fits (a TensorRT engine on a CPU-only box, an engine over
        every budget) goes to the local slots anyway, where loading it fails with the reason.
        """
        local = [d for d in self.devices if d.kind != REMOTE]
        refused = set()
        for pipeline, req in self.requirements().items():
            if req.fits(device) or (device.kind != REMOTE and not req.remote and not any(req.fits(d) for d in local)):
                continue
            refused.add(pipeline)
        return refused


class Scheduler:
    """The service component ``worker``: the slots' workers plus a thread that places remote lanes and preempts."""

    name = "worker"

    def __init__(
        self,
        store: StateStore,
        queue: JobQueue,
        pipelines: Mapping[str, PipelineFn],
        report: ReportFn,
        deliver: DeliverFn,
        source: EngineSource,
        devices: Sequence[Device],
        tasks: Mapping[str, Sequence[str]],
        *,
        data_dir: Path | None = None,
        preemption: bool = True,
        max_wait_seconds: float = 1800.0,
        poll_seconds: float = 0.5,
        on_study_failure: Callable[[Job, str], None] | None = None,
    ) -> None:
        if not devices:
            raise ValueError("the scheduler needs at least one device slot")
        self.store, self.queue, self.source = store, queue, source
        self.pipelines, self.report, self.deliver = dict(pipelines), report, deliver
        self.devices = list(devices)
        self.preemption, self.max_wait_seconds, self.poll_seconds = preemption, max_wait_seconds, poll_seconds
        self.data_dir = data_dir
        self.on_study_failure = on_study_failure
        self.placement = Placement(source, tasks, self.devices)
        self.board = SlotBoard(store)
        self._prefix = f"{socket.gethostname()}:{os.getpid()}:worker"
        self.workers: list[Worker] = [self._worker(d, EngineCache(source, d.cpu_threads, d.name), i)
                                      for i, d in enumerate(self.devices)]
        self._remote_engines = EngineCache(source, devices[0].cpu_threads if devices[0].kind == "cpu" else 0, "cpu")
        self.remote_lanes: list[Worker] = []
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.preemptions = 0  #: yield requests made (for tests and logs)

    def _worker(self, device: Device, engines: EngineCache, index: int) -> Worker:
        worker = Worker(
            self.store, self.queue, self.pipelines, self.report, self.deliver, engines, self.poll_seconds,
            owner=f"{self._prefix}{index}", slot=device.slot,
            excludes=lambda: self.placement.excludes(device), data_dir=self.data_dir,
            monitor=self.board,
        )
        worker.on_study_failure = self.on_study_failure
        return worker

    # ------------------------------------------------------------------ component

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        requeued = self.queue.expire_leases(orphaned=lambda owner: orphaned_lease(owner, self._prefix))
        if requeued:
            logger.warning("%d job(s) of a worker that died went back to the queue", requeued)
        self.board.register(self.devices)
        self._stopping.clear()
        for worker in self.workers:
            worker.start(take_back_orphans=False)
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()
        logger.info("scheduler started with %d slot(s): %s", len(self.workers),
                    ", ".join(f"{d.slot}={d.name}" for d in self.devices))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop placing, then every worker (their running jobs go back to the queue)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        workers = [*self.workers, *self.remote_lanes]
        for worker in workers:  # every slot's job stops at its next batch, all at once
            worker.request_stop()
        for worker in workers:
            worker.stop(timeout=timeout)
        self._remote_engines.close()

    def notify(self) -> None:
        """A job was queued: wake the workers and the preemption check now."""
        self._wake.set()
        for worker in [*self.workers, *self.remote_lanes]:
            worker.notify()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._grow_remote_lanes()
                self.preempt_if_needed()
            except Exception:  # the store or the registry failed: keep scheduling
                logger.exception("scheduler loop error")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    # ------------------------------------------------------------------ remote lanes

    def _grow_remote_lanes(self) -> None:
        """Start remote lanes up to the pool's capacity (one before any remote engine is loaded)."""
        if not self.placement.needs_remote():
            return
        capacity = min(MAX_REMOTE_LANES, self._remote_engines.remote_capacity() or 1)
        while len(self.remote_lanes) < capacity and not self._stopping.is_set():
            index = len(self.remote_lanes)
            device = Device(f"remote{index}", REMOTE)
            lane = self._worker(device, self._remote_engines, len(self.devices) + index)
            self.board.register([device], replace=False)
            self.remote_lanes.append(lane)
            lane.start(take_back_orphans=False)
            logger.info("remote lane %d started (pool capacity %d)", index, capacity)

    # ------------------------------------------------------------------ preemption

    def preempt_if_needed(self) -> list[str]:
        """Ask running jobs to yield to more urgent queued ones; return the ids asked (see the module doc)."""
        if not self.preemption:
            return []
        workers = [*self.workers, *self.remote_lanes]
        ready = self.queue.ready(limit=4 * len(workers) + 8)
        if not ready:
            return []
        excludes = {id(w): w.excludes() for w in workers}
        free = [w for w in workers if w.current is None]
        yielding = [w for w in workers if w.current is not None and w.yielding]
        busy = [w for w in workers if w.current is not None and not w.yielding]
        asked: list[str] = []
        for job in ready:
            capable = [w for w in workers if job.pipeline not in excludes[id(w)]]
            if _take(free, capable) or _take(yielding, capable):
                continue
            victim = self._victim(job, [w for w in busy if w in capable])
            if victim is None:
                continue
            running = victim.current
            if running is not None and victim.request_yield(running.id):
                busy.remove(victim)
                asked.append(running.id)
                self.preemptions += 1
                logger.info("job %s (priority %d) asks job %s (priority %d) on %s to yield", job.id, job.priority,
                            running.id, running.priority, victim.slot)
        for worker in yielding:  # no queued job needs these slots any more
            worker.cancel_yield()
        return asked

    def _victim(self, urgent: Job, candidates: list[Worker]) -> Worker | None:
        """The least urgent preemptible running job below ``urgent``'s priority (most work left among equals)."""
        best: tuple[int, int] | None = None
        chosen = None
        for worker in candidates:
            running = worker.current
            if running is None or running.priority <= urgent.priority:
                continue
            if running.yielded_seconds > self.max_wait_seconds:
                continue  # it has waited long enough after yielding before: it runs to the end
            left = self._work_left(running.id)
            key = (running.priority, left)
            if best is None or key > best:
                best, chosen = key, worker
        return chosen

    def _work_left(self, job_id: str) -> int:
        try:
            job = self.queue.get(job_id)
        except Exception:
            return 0
        return max(0, job.progress_total - job.progress_done)


def _take(pool: list[Worker], capable: list[Worker]) -> bool:
    """Remove one worker of ``capable`` from ``pool``; True if there was one."""
    for worker in pool:
        if worker in capable:
            pool.remove(worker)
            return True
    return False
