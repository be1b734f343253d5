"""The inference worker: one thread that owns the accelerator and runs jobs to completion.

It leases the next job from :class:`~appliance.jobs.JobQueue`, keeps the lease
alive with a heartbeat thread, runs the job's pipeline (a callable from the
pipeline registry), hands the :class:`~appliance.findings.StudyResult` to the
report callable, queues each written file for every destination, and marks the
job succeeded. Engine sessions stay loaded between jobs in an
:class:`EngineCache` (one per task, reloaded when the active version changes).

Failures: :class:`~appliance.errors.JobFailed`, ``StudyIncomplete`` and
``ReportError`` are permanent (the job fails with the message as reason); any
other exception is transient and retried up to ``worker.max_attempts``. A job
interrupted by :meth:`Worker.stop` is released back to the queue, and so is one
whose engine is unreachable (``engines.errors.EngineUnavailable``, also when a
pipeline wrapped it), without counting the attempt.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from appliance.config import Config
from appliance.errors import ApplianceError, JobFailed, ReportError, StudyIncomplete
from appliance.findings import StudyResult
from appliance.jobs import Job, JobQueue
from appliance.state import StateStore
from engines.errors import EngineUnavailable

__all__ = [
    "DeliverFn",
    "EngineCache",
    "EngineSource",
    "JobInterrupted",
    "PipelineFn",
    "ProgressFn",
    "ReportFn",
    "Worker",
    "summarize",
    "worker_component",
]

logger = logging.getLogger(__name__)

#: ``progress(done, total)``: units of work done (tiles, volumes); raises JobInterrupted when the job must stop
ProgressFn = Callable[[int, int], None]
#: a pipeline: ``(job, store, engines, progress) -> StudyResult``
PipelineFn = Callable[[Job, StateStore, "EngineCache", ProgressFn], StudyResult]
#: the report builder: ``(result, job) -> files written`` (SR, SEG, ...)
ReportFn = Callable[[StudyResult, Job], Sequence[Path]]
#: delivery: ``(job, files) -> number of delivery rows queued``
DeliverFn = Callable[[Job, Sequence[Path]], int]

PERMANENT_ERRORS: tuple[type[BaseException], ...] = (JobFailed, StudyIncomplete, ReportError)
PROGRESS_INTERVAL_SECONDS = 0.5
#: how long the worker waits before leasing again after a job went back because its engine is unreachable
ENGINE_RETRY_SECONDS = 5.0


class JobInterrupted(ApplianceError):
    """The worker is stopping or lost its lease: the job goes back to the queue."""


class EngineSource(Protocol):
    """What the cache needs from ``engines.registry.Registry``."""

    def active_versions(self) -> dict[str, str]: ...

    def load_active(self, task: str, cpu_threads: int = 0) -> Any: ...


class EngineCache:
    """Loaded engine sessions, one per task, kept between jobs; reloaded when the active version changes."""

    def __init__(self, source: EngineSource, cpu_threads: int = 0) -> None:
        self.source = source
        self.cpu_threads = cpu_threads
        self._engines: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()
        self.loads = 0  #: how many sessions were loaded (for tests and the dashboard)

    def get(self, task: str) -> Any:
        """The engine of the active version of ``task``, loading it only when that version is not loaded."""
        active = self.source.active_versions().get(task)
        with self._lock:
            cached = self._engines.get(task)
            if cached is not None and cached[0] == active:
                return cached[1]
            if cached is not None:
                logger.info("engine %s: active version changed from %s to %s, reloading", task, cached[0], active)
                _close(cached[1])
                del self._engines[task]
            engine = self.source.load_active(task, cpu_threads=self.cpu_threads)
            version = str(getattr(getattr(engine, "manifest", None), "version", active))
            self._engines[task] = (version, engine)
            self.loads += 1
            logger.info("engine %s %s loaded", task, version)
            return engine

    def loaded(self) -> dict[str, str]:
        """Task -> version of the sessions held now."""
        with self._lock:
            return {task: version for task, (version, _) in self._engines.items()}

    def close(self) -> None:
        with self._lock:
            for _, engine in self._engines.values():
                _close(engine)
            self._engines.clear()


def _close(engine: Any) -> None:
    try:
        engine.close()
    except Exception:  # closing must never stop the worker
        logger.exception("closing an engine failed")


def summarize(result: StudyResult, files: Sequence[Path], deliveries: int, seconds: dict[str, float]) -> dict[str, Any]:
    """The job's ``result`` column: findings and timings by opaque id, never patient data."""
    findings = [
        {
            "pipeline": f.pipeline,
            "probability": round(float(f.probability), 6),
            "threshold": float(f.threshold),
            "positive": f.positive,
            "engine": f"{f.engine.task}@{f.engine.version}",
            "precision": f.engine.precision,
            "demo": f.engine.demo,
            "tiles_scored": int(f.tiles_scored),
            "kinetic_curve": f.kinetic_curve,
        }
        for f in result.findings
    ]
    return {
        "findings": findings,
        "objects": [p.name for p in files],
        "deliveries": deliveries,
        "tiles_scored": sum(int(f.tiles_scored) for f in result.findings),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


class _Lease:
    """The running job's lease: a heartbeat thread plus throttled progress that can interrupt the job."""

    def __init__(self, queue: JobQueue, job: Job, owner: str, stopping: threading.Event) -> None:
        self.queue, self.job, self.owner, self.stopping = queue, job, owner, stopping
        self.lost = threading.Event()
        self._done = threading.Event()
        self._last_progress = 0.0
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        interval = max(0.05, self.queue.lease_seconds / 3)
        while not self._done.wait(interval):
            try:
                if not self.queue.heartbeat(self.job.id, self.owner):
                    logger.warning("job %s: lease lost", self.job.id)
                    self.lost.set()
                    return
            except Exception:
                logger.exception("job %s: heartbeat failed", self.job.id)

    def check(self) -> None:
        if self.lost.is_set():
            raise JobInterrupted(f"job {self.job.id} lost its lease")
        if self.stopping.is_set():
            raise JobInterrupted(f"job {self.job.id} interrupted: the worker is stopping")

    def progress(self, done: int, total: int) -> None:
        self.check()
        now = time.monotonic()
        if done >= total or now - self._last_progress >= PROGRESS_INTERVAL_SECONDS:
            self._last_progress = now
            if not self.queue.progress(self.job.id, self.owner, done, total):
                self.lost.set()
                self.check()


class Worker:
    """The one inference worker (a service component named ``worker``)."""

    name = "worker"
    #: issue 13: ``(job, reason)`` for a job failing for a reason in the study (``appliance.reports.unavailable``)
    on_study_failure: Callable[[Job, str], None] | None = None

    def __init__(
        self,
        store: StateStore,
        queue: JobQueue,
        pipelines: Mapping[str, PipelineFn],
        report: ReportFn,
        deliver: DeliverFn,
        engines: EngineCache,
        poll_seconds: float = 0.5,
        owner: str | None = None,
    ) -> None:
        self.store, self.queue, self.engines = store, queue, engines
        self.pipelines = dict(pipelines)
        self.report, self.deliver = report, deliver
        self.poll_seconds = poll_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:worker"
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: Job | None = None
        self._current_lock = threading.Lock()
        self.engine_retry_seconds = ENGINE_RETRY_SECONDS

    # ------------------------------------------------------------------ component

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        requeued = self.queue.expire_leases(orphaned=self._orphaned)
        if requeued:
            logger.warning("%d job(s) of a worker that died went back to the queue", requeued)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="inference-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt the running job (released to the queue), stop the thread and close the engines."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout)
            if thread.is_alive():
                with self._current_lock:
                    job = self._current
                if job is not None:
                    logger.warning("job %s did not stop within %.0f s; releasing its lease", job.id, timeout)
                    self.queue.release(job.id, self.owner)
            else:
                self.engines.close()
        self._thread = None

    def _orphaned(self, owner: str) -> bool:
        """True for a lease of a worker process on this host that no longer runs (killed, crashed).

        Called before this worker leases anything, so a lease in our own name (a PID reused
        after a container restart) is orphaned too. Other hosts' leases wait for expiry.
        """
        parts = owner.rsplit(":", 2)
        if len(parts) != 3 or parts[2] != "worker" or not parts[1].isdigit():
            return False
        host, pid = parts[0], int(parts[1])
        if host != socket.gethostname():
            return False
        if owner == self.owner:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def notify(self) -> None:
        """Wake the worker now (a job was queued)."""
        self._wake.set()

    @property
    def current_job(self) -> str | None:
        with self._current_lock:
            return self._current.id if self._current else None

    def _loop(self) -> None:
        logger.info("worker %s started", self.owner)
        while not self._stopping.is_set():
            try:
                job = self.run_once()
            except Exception:  # the store failed: keep the worker alive and try again
                logger.exception("worker loop error")
                job = None
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
        logger.info("worker %s stopped", self.owner)

    # ------------------------------------------------------------------ one job

    def run_once(self) -> Job | None:
        """Lease and process one job; return it (as leased), or None when the queue has nothing ready."""
        if self._stopping.is_set():
            return None
        job = self.queue.lease(self.owner)
        if job is None:
            return None
        with self._current_lock:
            self._current = job
        try:
            self._process(job)
        finally:
            with self._current_lock:
                self._current = None
        return job

    def _process(self, job: Job) -> None:
        times: dict[str, float] = {}
        with _Lease(self.queue, job, self.owner, self._stopping) as lease:
            try:
                pipeline = self.pipelines.get(job.pipeline)
                if pipeline is None:
                    known = ", ".join(sorted(self.pipelines)) or "none"
                    raise JobFailed(f"no pipeline named {job.pipeline!r}; known: {known}")
                t0 = time.monotonic()
                result = pipeline(job, self.store, self.engines, lease.progress)
                times["pipeline"] = time.monotonic() - t0
                lease.check()
                t1 = time.monotonic()
                files = list(self.report(result, job))
                times["report"] = time.monotonic() - t1
                deliveries = self.deliver(job, files)
                times["total"] = time.monotonic() - t0
            except JobInterrupted as exc:
                self.queue.release(job.id, self.owner, reason=str(exc))
                return
            except PERMANENT_ERRORS as exc:
                if self._requeue_unavailable(job, exc):
                    return
                if self._stopping.is_set() or lease.lost.is_set():
                    self.queue.release(job.id, self.owner)
                else:
                    if isinstance(exc, StudyIncomplete) and self.on_study_failure is not None:
                        self.on_study_failure(job, str(exc))  # issue 13: PACS learns why there is no result
                    self.queue.fail(job.id, self.owner, str(exc), transient=False)
                return
            except Exception as exc:
                if self._requeue_unavailable(job, exc):
                    return
                if self._stopping.is_set() or lease.lost.is_set():
                    self.queue.release(job.id, self.owner)
                    return
                logger.exception("job %s: %s", job.id, type(exc).__name__)
                self.queue.fail(job.id, self.owner, f"{type(exc).__name__}: {exc}", transient=True)
                return
        self.queue.succeed(job.id, self.owner, summarize(result, files, deliveries, times))

    def _requeue_unavailable(self, job: Job, exc: BaseException) -> bool:
        """An unreachable engine is not the study's fault: back to the queue, attempt not counted, then wait."""
        unavailable = _engine_unavailable(exc)
        if unavailable is None:
            return False
        logger.warning("job %s: engine unavailable, back to the queue: %s", job.id, unavailable)
        self.queue.release(job.id, self.owner, reason=f"waiting for the engine: {unavailable}")
        self._stopping.wait(self.engine_retry_seconds)
        return True


def _engine_unavailable(exc: BaseException) -> EngineUnavailable | None:
    """The EngineUnavailable behind ``exc`` (itself or a cause a pipeline wrapped), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, EngineUnavailable):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# ---------------------------------------------------------------------- wiring

#: pipeline name -> ``"module:function"`` with the :data:`PipelineFn` signature, imported at first use
PIPELINE_SPECS: dict[str, str] = {
    "pathology": "appliance.worker:run_pathology_job",
    "breast_mri": "appliance.worker:run_breast_mri_job",
}


def run_pathology_job(job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn,
                      config: Config | None = None) -> StudyResult:
    """Adapter: one slide series through ``appliance.pathology.job.run_job`` (resumes from ``data_dir/work``)."""
    from appliance.pathology.job import run_job

    return run_job(job, store, engines, progress, config)


def run_breast_mri_job(job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> StudyResult:
    """Adapter: one DCE study through ``appliance.mri.pipeline.run_breast_mri``."""
    from appliance.mri.pipeline import job_instance_paths, run_breast_mri

    paths = job_instance_paths(store, job.series_uids)
    progress(0, 1)
    result = run_breast_mri(job.id, job.study_uid, paths, engines.get("breast_mri"), store=store)
    progress(1, 1)
    return result


class _Lazy:
    """A ``"module:function"`` imported on first call, so a missing pipeline fails its jobs, not the service."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._func: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        if self._func is None:
            module, _, name = self.spec.partition(":")
            try:
                self._func = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as exc:
                raise JobFailed(f"pipeline {self.spec!r} is not available: {exc}") from None
        return self._func(*args)


def worker_component(
    config: Config,
    store: StateStore,
    pipelines: Mapping[str, PipelineFn] | None = None,
    report: ReportFn | None = None,
    deliver: DeliverFn | None = None,
    engines: EngineCache | None = None,
) -> Worker:
    """The worker built from the configuration (``[worker]``, ``[engines]``), for ``appliance.service``.

    ``pipelines`` defaults to :data:`PIPELINE_SPECS`; ``report`` and ``deliver`` to
    :func:`default_report` and :func:`default_deliver`.
    """
    if engines is None:
        from engines.registry import Registry

        registry = Registry(config.data_dir / "engines", config.trusted_keys_dir, **config.engine_options)
        engines = EngineCache(registry, cpu_threads=config.engines.cpu_threads)
    queue = JobQueue(store, config.worker.lease_seconds, config.worker.max_attempts)
    worker = Worker(
        store,
        queue,
        pipelines if pipelines is not None else {
            name: _Lazy(spec) for name, spec in PIPELINE_SPECS.items()} | {
            "pathology": functools.partial(run_pathology_job, config=config)},
        report if report is not None else default_report(config),
        deliver if deliver is not None else default_deliver(config, store),
        engines,
    )
    from appliance.reports.unavailable import unavailable_reporter  # issue 13: failures reported to PACS

    worker.on_study_failure = unavailable_reporter(config, store, worker.deliver)
    return worker


def default_report(config: Config) -> ReportFn:
    """``appliance.reports.build.build_reports`` into ``data_dir/outbox``, imported on first use."""

    def report(result: StudyResult, job: Job) -> Sequence[Path]:
        from appliance.outbox import outbox_dir
        from appliance.reports.build import build_reports
        from appliance.reports.sr import DeviceInfo

        device = DeviceInfo.from_serial(socket.gethostname()[:64] or "appliance", name=config.node.ae_title)
        return build_reports(result, outbox_dir(config.data_dir), device)

    return report


def default_deliver(config: Config, store: StateStore) -> DeliverFn:
    """``appliance.outbox.enqueue`` of every file for every destination; returns the rows queued."""

    def deliver(job: Job, files: Sequence[Path]) -> int:
        from appliance.outbox import enqueue

        names = [d.name for d in config.destinations]
        if not names:
            logger.warning("job %s: no destinations configured; %d result file(s) stay in the outbox", job.id, len(files))
            return 0
        rows = 0
        for path in files:
            rows += len(enqueue(store, job.id, path, _sop_instance_uid(path), names))
        return rows

    return deliver


def _sop_instance_uid(path: Path) -> str:
    """The file's SOP Instance UID (reports name files ``<SOP Instance UID>.dcm``; read it to be sure)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(ds.SOPInstanceUID)
