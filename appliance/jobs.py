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
from appliance.state import StateStore

__all__ = ["Job", "JobQueue", "backpressure", "job_id_for", "new_job_id"]

logger = logging.getLogger(__name__)

_ID_PREFIX = "J"
RETRY_DELAY_SECONDS = 2.0  #: first retry delay; doubles per attempt
MAX_RETRY_DELAY_SECONDS = 60.0
#: the order in which queued jobs are leased: urgency, then jobs that yielded to urgent work, then FIFO
LEASE_ORDER = "priority, case when coalesce(preemptions, 0) > 0 then 0 else 1 end, created_at, rowid"


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
        now = self.clock()
        with self.store.atomic() as db:
            cursor = db.conn.execute(
                "insert or ignore into jobs (id, pipeline, study_uid, series_uids, priority, state, attempts,"
                " lease_owner, lease_expires, progress_done, progress_total, reason, result, created_at,"
                " started_at, finished_at) values (?, ?, ?, ?, ?, 'queued', 0, '', 0, 0, 0, '', '{}', ?, 0, 0)",
                (ident, pipeline, study_uid, json.dumps(list(series_uids)), priority, now),
            )
            created = cursor.rowcount == 1
        if created:
            logger.info("job %s queued (%s, priority %d)", ident, pipeline, priority)
        return ident, created

    def expire_leases(self, orphaned: Callable[[str], bool] | None = None) -> int:
        """Return running jobs whose lease has expired to the queue (or fail them when out of attempts).

        ``orphaned(owner)`` True marks a lease as lost before it expires (its worker is known dead).
        """
        now = self.clock()
        with self.store.atomic() as db:
            rows = list(
                db.query(
                    "select id, attempts, lease_owner, lease_expires from jobs where state = 'running'"
                )
            )
            rows = [
                r for r in rows
                if float(r["lease_expires"] or 0.0) < now or (orphaned is not None and orphaned(r["lease_owner"] or ""))
            ]
            for row in rows:
                if row["attempts"] >= self.max_attempts:
                    reason = f"lease expired on attempt {row['attempts']} of {self.max_attempts} (worker lost)"
                    db.conn.execute(
                        "update jobs set state = 'failed', lease_owner = '', reason = ?, finished_at = ?"
                        " where id = ?",
                        (reason, now, row["id"]),
                    )
                    logger.warning("job %s failed: %s", row["id"], reason)
                else:
                    why = "lease expired" if float(row["lease_expires"] or 0.0) < now else "its worker died"
                    db.conn.execute(
                        "update jobs set state = 'queued', lease_owner = '', lease_expires = 0,"
                        " reason = ?, queued_at = ? where id = ?",
                        (f"{why}, requeued", now, row["id"]),
                    )
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
        where = ""
        params: tuple[Any, ...] = ()
        if exclude:
            where = f" and pipeline not in ({', '.join('?' for _ in exclude)})"
            params = tuple(sorted(exclude))
        with self.store.atomic() as db:
            rows = list(
                db.query(
                    f"select id from jobs where state = 'queued' and coalesce(lease_expires, 0) <= ?{where}"
                    f" order by {LEASE_ORDER} limit 1",
                    (now, *params),
                )
            )
            if not rows:
                return None
            ident = rows[0]["id"]
            db.conn.execute(
                "update jobs set state = 'running', lease_owner = ?, lease_expires = ?,"
                " attempts = attempts + 1, started_at = ?, reason = '',"
                " yielded_seconds = coalesce(yielded_seconds, 0) + case when coalesce(preemptions, 0) > 0"
                " and coalesce(queued_at, 0) > 0 then max(0, ? - queued_at) else 0 end where id = ?",
                (owner, now + self.lease_seconds, now, now, ident),
            )
            job = self._get(db, ident)
        logger.info("job %s leased by %s (attempt %d)", job.id, owner, job.attempts)
        return job

    def _owned_update(self, job_id: str, owner: str, sql: str, params: tuple[Any, ...]) -> bool:
        with self.store.atomic() as db:
            cursor = db.conn.execute(
                sql + " where id = ? and state = 'running' and lease_owner = ?", (*params, job_id, owner)
            )
            return cursor.rowcount == 1

    def heartbeat(self, job_id: str, owner: str) -> bool:
        """Extend the lease; False when ``owner`` no longer holds it (it expired and was taken back)."""
        return self._owned_update(
            job_id, owner, "update jobs set lease_expires = ?", (self.clock() + self.lease_seconds,)
        )

    def progress(self, job_id: str, owner: str, done: int, total: int) -> bool:
        """Record progress (``done`` of ``total`` units) and extend the lease; False when the lease is lost."""
        return self._owned_update(
            job_id,
            owner,
            "update jobs set progress_done = ?, progress_total = ?, lease_expires = ?",
            (max(0, done), max(0, total), self.clock() + self.lease_seconds),
        )

    def succeed(self, job_id: str, owner: str, result: dict[str, Any]) -> bool:
        """Mark the job succeeded with a JSON-serialisable ``result`` summary (no patient data)."""
        done = self._owned_update(
            job_id,
            owner,
            "update jobs set state = 'succeeded', lease_owner = '', finished_at = ?, result = ?, reason = '',"
            " progress_done = max(progress_done, progress_total)",
            (self.clock(), json.dumps(result, sort_keys=True)),
        )
        if done:
            logger.info("job %s succeeded", job_id)
        else:
            logger.warning("job %s finished but %s no longer held its lease", job_id, owner)
        return done

    def fail(self, job_id: str, owner: str, reason: str, transient: bool = False) -> str | None:
        """End an attempt that failed; return the new state (``queued`` or ``failed``) or None if not owned.

        A transient failure goes back to the queue after a delay while attempts remain.
        """
        now = self.clock()
        with self.store.atomic() as db:
            rows = list(
                db.query(
                    "select attempts from jobs where id = ? and state = 'running' and lease_owner = ?",
                    (job_id, owner),
                )
            )
            if not rows:
                return None
            attempts = int(rows[0]["attempts"])
            if transient and attempts < self.max_attempts:
                delay = min(MAX_RETRY_DELAY_SECONDS, RETRY_DELAY_SECONDS * 2 ** (attempts - 1))
                db.conn.execute(
                    "update jobs set state = 'queued', lease_owner = '', lease_expires = ?, reason = ?, queued_at = ?"
                    " where id = ?",
                    (now + delay, f"attempt {attempts} failed, retrying: {reason}", now, job_id),
                )
                logger.warning("job %s attempt %d failed, retry in %.0f s: %s", job_id, attempts, delay, reason)
                return "queued"
            final = f"failed after {attempts} attempt(s): {reason}" if transient else reason
            db.conn.execute(
                "update jobs set state = 'failed', lease_owner = '', finished_at = ?, reason = ? where id = ?",
                (now, final, job_id),
            )
        logger.error("job %s failed: %s", job_id, final)
        return "failed"

    def release(self, job_id: str, owner: str, reason: str = "released by a stopping worker") -> bool:
        """Give the job back to the queue without counting the attempt (the worker is stopping)."""
        done = self._owned_update(
            job_id,
            owner,
            "update jobs set state = 'queued', lease_owner = '', lease_expires = 0,"
            " attempts = max(0, attempts - 1), reason = ?, queued_at = ?",
            (reason, self.clock()),
        )
        if done:
            logger.info("job %s released back to the queue", job_id)
        return done

    def preempt(self, job_id: str, owner: str, reason: str) -> bool:
        """The job yielded its slot to more urgent work: back to the queue ahead of its peers, attempt not counted."""
        done = self._owned_update(
            job_id,
            owner,
            "update jobs set state = 'queued', lease_owner = '', lease_expires = 0,"
            " attempts = max(0, attempts - 1), preemptions = coalesce(preemptions, 0) + 1, reason = ?, queued_at = ?",
            (reason, self.clock()),
        )
        if done:
            logger.info("job %s preempted, back to the queue", job_id)
        return done

    def defer(self, job_id: str, owner: str, reason: str, delay: float) -> bool:
        """Back to the queue for at least ``delay`` seconds without counting the attempt (engine unavailable)."""
        now = self.clock()
        done = self._owned_update(
            job_id,
            owner,
            "update jobs set state = 'queued', lease_owner = '', lease_expires = ?,"
            " attempts = max(0, attempts - 1), reason = ?, queued_at = ?",
            (now + max(0.0, delay), reason, now),
        )
        if done:
            logger.warning("job %s deferred for %.0f s: %s", job_id, delay, reason)
        return done

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _get(db: Any, job_id: str) -> Job:
        rows = list(db.query("select * from jobs where id = ?", (job_id,)))
        if not rows:
            raise StateError(f"no job with id {job_id!r}")
        return Job.from_row(rows[0])

    def get(self, job_id: str) -> Job:
        """The job with ``job_id``; StateError if there is none."""
        rows = self.store.query("select * from jobs where id = ?", (job_id,))
        if not rows:
            raise StateError(f"no job with id {job_id!r}")
        return Job.from_row(rows[0])

    def exists(self, job_id: str) -> bool:
        return bool(self.store.query("select 1 from jobs where id = ?", (job_id,)))

    def ready(self, limit: int = 50) -> list[Job]:
        """Queued jobs that may be leased now, in lease order (what the scheduler places next)."""
        rows = self.store.query(
            f"select * from jobs where state = 'queued' and coalesce(lease_expires, 0) <= ? order by {LEASE_ORDER}"
            " limit ?",
            (self.clock(), limit),
        )
        return [Job.from_row(row) for row in rows]

    def depth(self) -> int:
        """How many jobs wait in the queue."""
        return int(self.store.query("select count(*) as n from jobs where state = 'queued'")[0]["n"])

    def recent(self, limit: int = 50, states: Sequence[str] = ()) -> list[Job]:
        """Jobs, running first, then queued in lease order, then the most recently finished."""
        where = ""
        params: tuple[Any, ...] = ()
        if states:
            where = f"where state in ({', '.join('?' for _ in states)})"
            params = tuple(states)
        rows = self.store.query(
            f"select * from jobs {where} order by case state when 'running' then 0 when 'queued' then 1 else 2 end,"
            " case when state = 'queued' then priority else 0 end,"
            " case when state = 'queued' and coalesce(preemptions, 0) > 0 then 0 else 1 end,"
            " case when state in ('running', 'queued') then created_at else -finished_at end limit ?",
            (*params, limit),
        )
        return [Job.from_row(row) for row in rows]


def backpressure(store: StateStore, max_queue: int) -> dict[str, Any]:
    """Queue depth against ``max_queue``: ``{"queued", "max_queue", "over"}`` for the node and the dashboard."""
    depth = int(store.query("select count(*) as n from jobs where state = 'queued'")[0]["n"])
    return {"queued": depth, "max_queue": max_queue, "over": depth >= max_queue}

