"""The inference worker of one device slot: leases a job, runs it on the slot's engines, reports it.

A :class:`Worker` thread leases the most urgent job its slot can run from
:class:`~appliance.jobs.JobQueue`, keeps the lease alive with a heartbeat
thread, runs the job's pipeline (the ``run`` of an :class:`appliance.pipelines.Pipeline`), hands
the :class:`~appliance.findings.StudyResult` to the report callable, queues
each written file for every destination and marks the job succeeded (one transaction). Engine
sessions stay loaded between jobs in the slot's own
:class:`~appliance.engine_cache.EngineCache`. :mod:`appliance.scheduler` runs
one worker per device slot and decides preemption; :mod:`appliance.inference`
wires them to the pipelines (:mod:`appliance.pipelines`), reports and outbox.

Failures: :class:`~appliance.errors.JobFailed`, ``StudyIncomplete`` and
``ReportError`` are permanent (the job fails with the message as reason);
``engines.errors.EngineUnavailable`` puts the job back in the queue after a
delay without counting an attempt; any other exception is transient and
retried up to ``worker.max_attempts``. A job interrupted by :meth:`Worker.stop`
or a lost lease is released back to the queue; one asked to yield
(:meth:`Worker.request_yield`) stops at its next batch boundary
(:class:`JobPreempted`) and goes back ahead of its peers. A pipeline keeps its
checkpoints in ``job.work_dir`` (``<data_dir>/work/<job id>``), removed when the
job succeeds or fails for good. A job that fails for good (a permanent error, or
the last attempt of a transient one) is reported to PACS by ``on_study_failure``
(the "AI result not available" SR with the reason), so no reader waits for a
result that will not come.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from appliance.engine_cache import EngineCache, EngineSource
from appliance.errors import JobFailed, ReportError, StudyIncomplete
from appliance.findings import StudyResult
from appliance.jobs import Job, JobQueue
from appliance.lease import JobInterrupted, JobLease, JobPreempted, orphaned_lease
from appliance.state import JobState, StateStore
from engines.errors import EngineUnavailable

__all__ = [
    "DeliverFn",
    "EngineCache",
    "EngineSource",
    "JobInterrupted",
    "JobPreempted",
    "PipelineFn",
    "ProgressFn",
    "ReportFn",
    "SlotMonitor",
    "Worker",
    "job_work_dir",
    "orphaned_lease",
    "summarize",
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
#: how long a job waits in the queue when its engine cannot be reached (not a failed attempt)
ENGINE_UNAVAILABLE_DELAY_SECONDS = 15.0
_WORK_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SlotMonitor(Protocol):
    """Told when a slot's job starts and ends (the dashboard's slot board)."""

    def job_started(self, slot: str, job: Job) -> None: ...

    def job_ended(self, slot: str, job: Job, outcome: str | None) -> None: ...


def job_work_dir(data_dir: Path, job_id: str) -> Path:
    """Where a job keeps its checkpoints (e.g. the slide's tile embeddings): ``<data_dir>/work/<job id>``."""
    if not _WORK_NAME.match(job_id):
        raise ValueError(f"job id {job_id!r} cannot name a work directory; expected 1-64 of A-Z a-z 0-9 _ -")
    return Path(data_dir) / "work" / job_id


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


class Worker:
    """The worker of one device slot (alone, a service component named ``worker``).

    ``excludes()`` (default: none) names the pipelines this slot cannot run now (their
    engines need another kind of device or more memory); the queue hands it the most
    urgent job of the others. With ``data_dir`` each job gets its ``work_dir`` (:func:`job_work_dir`).
    """

    name = "worker"
    #: ``(job, reason)`` for a job that failed for good (``appliance.reports.unavailable``: PACS learns why)
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
        *,
        slot: str = "slot0",
        excludes: Callable[[], Collection[str]] | None = None,
        data_dir: Path | None = None,
        monitor: SlotMonitor | None = None,
        unavailable_delay: float = ENGINE_UNAVAILABLE_DELAY_SECONDS,
    ) -> None:
        self.store, self.queue, self.engines = store, queue, engines
        self.pipelines = dict(pipelines)
        self.report, self.deliver = report, deliver
        self.poll_seconds = poll_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:worker"
        self.slot, self.data_dir, self.monitor = slot, data_dir, monitor
        self.excludes: Callable[[], Collection[str]] = excludes or (lambda: ())
        self.unavailable_delay = unavailable_delay
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._yield = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: Job | None = None
        self._current_lock = threading.Lock()

    # ------------------------------------------------------------------ component

    def start(self, take_back_orphans: bool = True) -> None:
        """Start the thread; first take back the leases of dead workers on this host (unless a scheduler did)."""
        if self._thread is not None and self._thread.is_alive():
            return
        if take_back_orphans:
            requeued = self.queue.expire_leases(orphaned=lambda owner: orphaned_lease(owner, self.owner))
            if requeued:
                logger.warning("%d job(s) of a worker that died went back to the queue", requeued)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=f"inference-{self.slot}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the running job to stop at its next batch (released to the queue); :meth:`stop` waits for it."""
        self._stopping.set()
        self._wake.set()

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

    def notify(self) -> None:
        """Wake the worker now (a job was queued)."""
        self._wake.set()

    @property
    def current_job(self) -> str | None:
        with self._current_lock:
            return self._current.id if self._current else None

    @property
    def current(self) -> Job | None:
        """The running job as leased (priority, preemption record), or None when the slot is free."""
        with self._current_lock:
            return self._current

    @property
    def yielding(self) -> bool:
        """True while the running job has been asked to yield and has not yet stopped."""
        return self._yield.is_set()

    def request_yield(self, job_id: str) -> bool:
        """Ask the running job ``job_id`` to yield at its next batch boundary; False if it is not running here."""
        with self._current_lock:
            if self._current is None or self._current.id != job_id:
                return False
            self._yield.set()
        logger.info("job %s on %s asked to yield to more urgent work", job_id, self.slot)
        return True

    def cancel_yield(self) -> None:
        """Withdraw a yield request (the urgent job found another slot first)."""
        if self._yield.is_set():
            self._yield.clear()
            logger.info("%s: yield request withdrawn", self.slot)

    def _loop(self) -> None:
        logger.info("worker %s (%s) started", self.owner, self.slot)
        while not self._stopping.is_set():
            try:
                job = self.run_once()
            except Exception:  # the store failed: keep the worker alive and try again
                logger.exception("worker loop error")
                job = None
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
        logger.info("worker %s (%s) stopped", self.owner, self.slot)

    # ------------------------------------------------------------------ one job

    def run_once(self) -> Job | None:
        """Lease and process one job; return it (as leased), or None when the queue has nothing ready."""
        if self._stopping.is_set():
            return None
        job = self.queue.lease(self.owner, self.excludes())
        if job is None:
            return None
        if self.data_dir is not None and _WORK_NAME.match(job.id):
            job = dataclasses.replace(job, work_dir=job_work_dir(self.data_dir, job.id))
        with self._current_lock:
            self._current = job
            self._yield.clear()
        if self.monitor is not None:
            self.monitor.job_started(self.slot, job)
        outcome = None
        try:
            outcome = self._process(job)
        finally:
            with self._current_lock:
                self._current = None
                self._yield.clear()
            if self.monitor is not None:
                self.monitor.job_ended(self.slot, job, outcome)
        return job

    def _process(self, job: Job) -> str | None:
        """Run one leased job; return ``"preempted"`` when it yielded its slot, else None."""
        times: dict[str, float] = {}
        with JobLease(self.queue, job, self.owner, self._stopping, self._yield) as lease:
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
                files = list(self.report(result, job))  # written and fsync'd before the hand-off
                times["report"] = time.monotonic() - t1
                self._hand_off(job, result, files, times, t0)
            except JobPreempted as exc:
                self.queue.preempt(job.id, self.owner, reason=str(exc))
                return "preempted"
            except JobInterrupted as exc:
                self.queue.release(job.id, self.owner, reason=str(exc))
                return None
            except PERMANENT_ERRORS as exc:
                if self._defer_unavailable(job, exc, lease):
                    return None
                if self._stopping.is_set() or lease.lost.is_set():
                    self.queue.release(job.id, self.owner)
                else:
                    self._report_failure(job, str(exc))
                    self.queue.fail(job.id, self.owner, str(exc), transient=False)
                    _discard_work(job)
                return None
            except Exception as exc:
                if self._defer_unavailable(job, exc, lease):
                    return None
                if self._stopping.is_set() or lease.lost.is_set():
                    self.queue.release(job.id, self.owner)
                    return None
                logger.exception("job %s: %s", job.id, type(exc).__name__)
                if self.queue.fail(job.id, self.owner, f"{type(exc).__name__}: {exc}", transient=True) == JobState.FAILED:
                    self._report_failure(job, f"the analysis failed on every attempt ({type(exc).__name__})")
                    _discard_work(job)
                return None
        _discard_work(job)
        return None

    def _report_failure(self, job: Job, reason: str) -> None:
        """A job that ended without a result: PACS gets the "AI result not available" SR with the reason (issue 13)."""
        if self.on_study_failure is not None:
            self.on_study_failure(job, reason)

    def _hand_off(self, job: Job, result: StudyResult, files: Sequence[Path], times: dict[str, float],
                  t0: float) -> None:
        """Queue the result files for delivery and mark the job succeeded, in one transaction.

        A lease lost meanwhile rolls the delivery rows back with it: the job runs again
        and queues the same objects (its report UIDs derive from the job id).
        """
        with self.store.atomic():
            deliveries = self.deliver(job, files)
            times["total"] = time.monotonic() - t0
            if not self.queue.succeed(job.id, self.owner, summarize(result, files, deliveries, times)):
                raise JobInterrupted(f"job {job.id}: lease lost before its result was handed off")


    def _defer_unavailable(self, job: Job, exc: BaseException, lease: JobLease) -> bool:
        """An unreachable engine is not the study's fault: back to the queue after a delay, attempt not counted."""
        unavailable = _engine_unavailable(exc)
        if unavailable is None:
            return False
        if self._stopping.is_set() or lease.lost.is_set():
            self.queue.release(job.id, self.owner)
        else:
            self.queue.defer(job.id, self.owner, f"engine unavailable, waiting: {unavailable}", self.unavailable_delay)
        return True


def _engine_unavailable(exc: BaseException) -> EngineUnavailable | None:
    """The EngineUnavailable behind ``exc`` (itself or a cause a pipeline wrapped), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, EngineUnavailable):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _discard_work(job: Job) -> None:
    """Remove the job's work directory (its checkpoints) once the job has ended for good."""
    if job.work_dir is not None and job.work_dir.exists():
        shutil.rmtree(job.work_dir, ignore_errors=True)
        logger.info("job %s: work directory removed", job.id)
