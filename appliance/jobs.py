"""The job queue on the state store's ``jobs`` table (shared/DESIGN.md, "Data flow").

A job is ``queued`` until a worker leases it (``running`` with ``lease_owner``
and ``lease_expires``); the worker renews the lease with :meth:`JobQueue.heartbeat`
while it works and ends it with :meth:`~JobQueue.succeed`, :meth:`~JobQueue.fail`
or :meth:`~JobQueue.release`. A lease that expires (the worker died) puts the
job back to ``queued``, so a job runs to completion once. Lower ``priority``
runs first (0 is urgent), then a job that yielded its slot to urgent work
(:meth:`JobQueue.preempt`, ahead of its peers), then first in, first out.
Transient failures are retried up to ``max_attempts`` with a growing delay,
then the job is ``failed`` with the reason; an engine that cannot be reached
now (:meth:`JobQueue.defer`) delays the job without counting an attempt.

While a job is ``queued``, ``lease_expires`` holds the earliest time it may be
leased again (the retry delay); 0 means at once. Every state change is one
transaction, so a process killed at any point restarts consistent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import StateError
from appliance.state import JobState, StateStore
from appliance.state.jobs import LEASE_ORDER

__all__ = ["LEASE_ORDER", "Job", "JobQueue", "backpressure", "job_id_for", "new_job_id"]

logger = logging.getLogger(__name__)

_ID_PREFIX = "J"
RETRY_DELAY_SECONDS = 2.0  #: first retry delay; doubles per attempt
MAX_RETRY_DELAY_SECONDS = 60.0


def new_job_id() -> str:
    """A random opaque job id: ``J`` and 12 hex digits."""
    return _ID_PREFIX + secrets.token_hex(6)


def job_id_for(pipeline: str, key: str) -> str:
    """The opaque job id of ``pipeline`` over ``key`` (a series or study UID): deterministic.

    One id per (pipeline, series/study) makes enqueueing idempotent, and the
    report UIDs derived from it make a re-run after a crash send the same objects.
    The hash reveals nothing about the study.
    """
    digest = hashlib.sha256(f"{pipeline}\0{key}".encode()).hexdigest()
    return _ID_PREFIX + digest[:12]


@dataclass(frozen=True)
class Job:
    """One row of the ``jobs`` table."""

    id: str
    pipeline: str
    study_uid: str
    series_uids: tuple[str, ...]
    priority: int
    state: str
    attempts: int
    lease_owner: str
    lease_expires: float
    progress_done: int
    progress_total: int
    reason: str
    result: dict[str, Any]
    created_at: float
    started_at: float
    finished_at: float
    preemptions: int = 0  #: times the job yielded its slot to more urgent work
    yielded_seconds: float = 0.0  #: time spent back in the queue after yielding (the starvation guard)
    work_dir: Path | None = None  #: ``<data_dir>/work/<job id>``, set by the worker for the pipeline's checkpoints

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=row["id"],
            pipeline=row["pipeline"],
            study_uid=row["study_uid"],
            series_uids=tuple(json.loads(row["series_uids"] or "[]")),
            priority=int(row["priority"]),
            state=row["state"],
            attempts=int(row["attempts"] or 0),
            lease_owner=row["lease_owner"] or "",
            lease_expires=float(row["lease_expires"] or 0.0),
            progress_done=int(row["progress_done"] or 0),
            progress_total=int(row["progress_total"] or 0),
            reason=row["reason"] or "",
            result=json.loads(row["result"] or "{}"),
            created_at=float(row["created_at"] or 0.0),
            started_at=float(row["started_at"] or 0.0),
            finished_at=float(row["finished_at"] or 0.0),
            preemptions=int(row.get("preemptions") or 0),
            yielded_seconds=float(row.get("yielded_seconds") or 0.0),
        )


class JobQueue:
    """Enqueue, lease, heartbeat and finish jobs in the state store.

    ``clock`` (default :func:`time.time`) is injectable so tests can move time.
    """

    def __init__(
        self,
        store: StateStore,
        lease_seconds: float = 60.0,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.store = store
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.clock = clock

    # ------------------------------------------------------------------ writing

    def enqueue(
        self,
        pipeline: str,
        study_uid: str,
        series_uids: Sequence[str],
        priority: int = 5,
        job_id: str | None = None,
    ) -> tuple[str, bool]:
        """Add a queued job; return ``(job id, created)``.

        With ``job_id`` given and already present, nothing changes and ``created`` is False.
        """
        if not 0 <= priority <= 9:
            raise ValueError(f"priority must lie in 0..9 (0 is urgent), got {priority}")
        ident = job_id or new_job_id()
        created = self.store.jobs.insert(ident, pipeline, study_uid, series_uids, priority, self.clock())
        if created:
            logger.info("job %s queued (%s, priority %d)", ident, pipeline, priority)
        return ident, created

    def expire_leases(self, orphaned: Callable[[str], bool] | None = None) -> int:
        """Return running jobs whose lease has expired to the queue (or fail them when out of attempts).

        ``orphaned(owner)`` True marks a lease as lost before it expires (its worker is known dead).
        """
        now = self.clock()
        table = self.store.jobs
        with self.store.atomic():
            rows = [
                r for r in table.running()
                if float(r["lease_expires"] or 0.0) < now or (orphaned is not None and orphaned(r["lease_owner"] or ""))
            ]
            for row in rows:
                if row["attempts"] >= self.max_attempts:
                    reason = f"lease expired on attempt {row['attempts']} of {self.max_attempts} (worker lost)"
                    table.fail(row["id"], reason, now)
                    logger.warning("job %s failed: %s", row["id"], reason)
                else:
                    why = "lease expired" if float(row["lease_expires"] or 0.0) < now else "its worker died"
                    table.requeue(row["id"], f"{why}, requeued", now)
                    logger.warning("job %s: %s, back to the queue", row["id"], why)
        return len(rows)

    def lease(self, owner: str, exclude: Collection[str] = ()) -> Job | None:
        """Take the next job (:data:`LEASE_ORDER`) for ``owner``, or None if none is ready.

        Jobs of the ``exclude`` pipelines are passed over: the slot leasing cannot run
        them, so it gets the most urgent job it can run.
        """
        if not owner:
            raise ValueError("a lease needs a non-empty owner")
        self.expire_leases()
        now = self.clock()
        with self.store.atomic():
            ident = self.store.jobs.next_ready(now, exclude)
            if ident is None:
                return None
            self.store.jobs.start(ident, owner, now, now + self.lease_seconds)
            job = self.get(ident)
        logger.info("job %s leased by %s (attempt %d)", job.id, owner, job.attempts)
        return job

    def heartbeat(self, job_id: str, owner: str) -> bool:
        """Extend the lease; False when ``owner`` no longer holds it (it expired and was taken back)."""
        return self.store.jobs.renew(job_id, owner, self.clock() + self.lease_seconds)

    def progress(self, job_id: str, owner: str, done: int, total: int) -> bool:
        """Record progress (``done`` of ``total`` units) and extend the lease; False when the lease is lost."""
        return self.store.jobs.renew(job_id, owner, self.clock() + self.lease_seconds, max(0, done), max(0, total))

    def succeed(self, job_id: str, owner: str, result: dict[str, Any]) -> bool:
        """Mark the job succeeded with a JSON-serialisable ``result`` summary (no patient data)."""
        done = self.store.jobs.succeed(job_id, owner, self.clock(), result)
        if done:
            logger.info("job %s succeeded", job_id)
        else:
            logger.warning("job %s finished but %s no longer held its lease", job_id, owner)
        return done

    def fail(self, job_id: str, owner: str, reason: str, transient: bool = False) -> JobState | None:
        """End an attempt that failed; return the new state (``queued`` or ``failed``) or None if not owned.

        A transient failure goes back to the queue after a delay while attempts remain.
        """
        now = self.clock()
        table = self.store.jobs
        with self.store.atomic():
            attempts = table.attempts(job_id, owner)
            if attempts is None:
                return None
            if transient and attempts < self.max_attempts:
                delay = min(MAX_RETRY_DELAY_SECONDS, RETRY_DELAY_SECONDS * 2 ** (attempts - 1))
                table.requeue(job_id, f"attempt {attempts} failed, retrying: {reason}", now, owner, now + delay)
                logger.warning("job %s attempt %d failed, retry in %.0f s: %s", job_id, attempts, delay, reason)
                return JobState.QUEUED
            final = f"failed after {attempts} attempt(s): {reason}" if transient else reason
            table.fail(job_id, final, now, owner)
        logger.error("job %s failed: %s", job_id, final)
        return JobState.FAILED

    def release(self, job_id: str, owner: str, reason: str = "released by a stopping worker") -> bool:
        """Give the job back to the queue without counting the attempt (the worker is stopping)."""
        done = self.store.jobs.requeue(job_id, reason, self.clock(), owner, refund=True)
        if done:
            logger.info("job %s released back to the queue", job_id)
        return done

    def preempt(self, job_id: str, owner: str, reason: str) -> bool:
        """The job yielded its slot to more urgent work: back to the queue ahead of its peers, attempt not counted."""
        done = self.store.jobs.requeue(job_id, reason, self.clock(), owner, refund=True, preempted=True)
        if done:
            logger.info("job %s preempted, back to the queue", job_id)
        return done

    def defer(self, job_id: str, owner: str, reason: str, delay: float) -> bool:
        """Back to the queue for at least ``delay`` seconds without counting the attempt (engine unavailable)."""
        now = self.clock()
        done = self.store.jobs.requeue(job_id, reason, now, owner, now + max(0.0, delay), refund=True)
        if done:
            logger.warning("job %s deferred for %.0f s: %s", job_id, delay, reason)
        return done

    # ------------------------------------------------------------------ reading

    def get(self, job_id: str) -> Job:
        """The job with ``job_id``; StateError if there is none."""
        row = self.store.jobs.get(job_id)
        if row is None:
            raise StateError(f"no job with id {job_id!r}")
        return Job.from_row(row)

    def exists(self, job_id: str) -> bool:
        return self.store.jobs.exists(job_id)

    def ready(self, limit: int = 50) -> list[Job]:
        """Queued jobs that may be leased now, in lease order (what the scheduler places next)."""
        return [Job.from_row(row) for row in self.store.jobs.ready(self.clock(), limit)]

    def depth(self) -> int:
        """How many jobs wait in the queue."""
        return self.store.jobs.depth()

    def recent(self, limit: int = 50, states: Sequence[str] = ()) -> list[Job]:
        """Jobs, running first, then queued in lease order, then the most recently finished."""
        return [Job.from_row(row) for row in self.store.jobs.recent(limit, states)]


def backpressure(store: StateStore, max_queue: int) -> dict[str, Any]:
    """Queue depth against ``max_queue``: ``{"queued", "max_queue", "over"}`` for the node and the dashboard."""
    depth = store.jobs.depth()
    return {"queued": depth, "max_queue": max_queue, "over": depth >= max_queue}
