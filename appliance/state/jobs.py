"""The ``jobs`` table: the work queue, one row per job with its lease and state (:class:`JobState`).

:class:`~appliance.jobs.JobQueue` decides (retries, delays, logging); this
class holds the statements. A state change of a leased job only happens for
the owner of the lease, and only along :data:`~appliance.state.states.TRANSITIONS`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from appliance.state._table import Table, marks
from appliance.state.states import JOB_STATES, JobState, sources

__all__ = ["LEASE_ORDER", "JobsTable"]

#: the order in which queued jobs are leased: urgency, then jobs that yielded to urgent work, then FIFO
LEASE_ORDER = "priority, case when coalesce(preemptions, 0) > 0 then 0 else 1 end, created_at, rowid"
_QUEUED_AT_LEASE = (  # time a preempted job spent back in the queue, added when it is leased again
    "yielded_seconds = coalesce(yielded_seconds, 0) + case when coalesce(preemptions, 0) > 0"
    " and coalesce(queued_at, 0) > 0 then max(0, :now - queued_at) else 0 end"
)


class JobsTable(Table):
    """Statements on ``jobs``; every write joins the caller's transaction or makes its own."""

    name = "jobs"

    def insert(self, job_id: str, pipeline: str, study_uid: str, series_uids: Sequence[str], priority: int,
               now: float) -> bool:
        """Add a queued job; False when ``job_id`` exists already."""
        with self.store.atomic() as db:
            cursor = db.execute(
                "insert or ignore into jobs (id, pipeline, study_uid, series_uids, priority, state, attempts,"
                " lease_owner, lease_expires, progress_done, progress_total, reason, result, created_at,"
                " started_at, finished_at) values (?, ?, ?, ?, ?, ?, 0, '', 0, 0, 0, '', '{}', ?, 0, 0)",
                (job_id, pipeline, study_uid, json.dumps(list(series_uids)), priority, JobState.QUEUED, now),
            )
            return cursor.rowcount == 1

    def running(self) -> list[dict[str, Any]]:
        """``id``, ``attempts``, ``lease_owner`` and ``lease_expires`` of every running job."""
        return self.store.query(
            "select id, attempts, lease_owner, lease_expires from jobs where state = ?", (JobState.RUNNING,)
        )

    def next_ready(self, now: float, exclude: Collection[str] = ()) -> str | None:
        """The id of the queued job to lease next (:data:`LEASE_ORDER`), passing over ``exclude`` pipelines."""
        skip = tuple(sorted(exclude))
        where = f" and pipeline not in ({marks(skip)})" if skip else ""
        rows = self.store.query(
            f"select id from jobs where state = ? and coalesce(lease_expires, 0) <= ?{where}"
            f" order by {LEASE_ORDER} limit 1",
            (JobState.QUEUED, now, *skip),
        )
        return str(rows[0]["id"]) if rows else None

    def start(self, job_id: str, owner: str, now: float, lease_until: float) -> bool:
        """The queued job is ``running`` for ``owner``: one more attempt, lease until ``lease_until``."""
        return self._move(
            job_id, JobState.RUNNING,
            "lease_owner = :owner, lease_expires = :until, attempts = attempts + 1, started_at = :now,"
            f" reason = '', {_QUEUED_AT_LEASE}",
            {"owner": owner, "until": lease_until, "now": now},
        )

    def renew(self, job_id: str, owner: str, lease_until: float, done: int | None = None, total: int = 0) -> bool:
        """Extend ``owner``'s lease (and record progress ``done`` of ``total``); False when not owned."""
        sets = "lease_expires = :until" + (", progress_done = :done, progress_total = :total" if done is not None else "")
        with self.store.atomic() as db:
            cursor = db.execute(
                f"update jobs set {sets} where id = :id and state = :run_state and lease_owner = :owner",
                {"until": lease_until, "done": done, "total": total, "id": job_id, "run_state": JobState.RUNNING,
                 "owner": owner},
            )
            return cursor.rowcount == 1

    def succeed(self, job_id: str, owner: str, now: float, result: dict[str, Any]) -> bool:
        """``owner``'s job ``succeeded`` with ``result`` (JSON); False when not owned."""
        return self._move(
            job_id, JobState.SUCCEEDED,
            "lease_owner = '', finished_at = :now, result = :result, reason = '',"
            " progress_done = max(progress_done, progress_total)",
            {"now": now, "result": json.dumps(result, sort_keys=True)}, owner,
        )

    def fail(self, job_id: str, reason: str, now: float, owner: str | None = None) -> bool:
        """The running job ``failed`` with ``reason`` (only ``owner``'s when given)."""
        return self._move(job_id, JobState.FAILED, "lease_owner = '', finished_at = :now, reason = :reason",
                          {"now": now, "reason": reason}, owner)

    def requeue(self, job_id: str, reason: str, now: float, owner: str | None = None, not_before: float = 0.0,
                refund: bool = False, preempted: bool = False) -> bool:
        """The running job goes back to ``queued`` (leasable from ``not_before``; ``refund`` uncounts the attempt)."""
        sets = "lease_owner = '', lease_expires = :not_before, reason = :reason, queued_at = :now"
        if refund:
            sets += ", attempts = max(0, attempts - 1)"
        if preempted:
            sets += ", preemptions = coalesce(preemptions, 0) + 1"
        return self._move(job_id, JobState.QUEUED, sets, {"not_before": not_before, "reason": reason, "now": now},
                          owner)

    def attempts(self, job_id: str, owner: str) -> int | None:
        """Attempts of ``owner``'s running job, or None when ``owner`` does not hold it."""
        rows = self.store.query(
            "select attempts from jobs where id = ? and state = ? and lease_owner = ?",
            (job_id, JobState.RUNNING, owner),
        )
        return int(rows[0]["attempts"]) if rows else None

    def _move(self, job_id: str, target: JobState, sets: str, values: dict[str, Any], owner: str | None = None) -> bool:
        allowed = sources(target)
        names = [f":s{i}" for i in range(len(allowed))]
        where = f"id = :id and state in ({', '.join(names)})" + (" and lease_owner = :holder" if owner is not None else "")
        params = {**values, "id": job_id, "target": target, "holder": owner, **{n[1:]: s for n, s in zip(names, allowed)}}
        with self.store.atomic() as db:
            return db.execute(f"update jobs set state = :target, {sets} where {where}", params).rowcount == 1

    # ------------------------------------------------------------------ reading

    def get(self, job_id: str) -> dict[str, Any] | None:
        rows = self.store.query("select * from jobs where id = ?", (job_id,))
        return rows[0] if rows else None

    def exists(self, job_id: str) -> bool:
        return bool(self.store.query("select 1 from jobs where id = ?", (job_id,)))

    def ready(self, now: float, limit: int) -> list[dict[str, Any]]:
        """Queued jobs that may be leased at ``now``, in lease order."""
        return self.store.query(
            f"select * from jobs where state = ? and coalesce(lease_expires, 0) <= ? order by {LEASE_ORDER} limit ?",
            (JobState.QUEUED, now, limit),
        )

    def depth(self) -> int:
        """How many jobs wait in the queue (the one queue depth: node, dashboard and metrics read it)."""
        return int(self.store.query("select count(*) as n from jobs where state = ?", (JobState.QUEUED,))[0]["n"])

    def recent(self, limit: int, states: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Jobs, running first, then queued in lease order, then the most recently finished."""
        where = f"where state in ({marks(states)})" if states else ""
        run, queued = JobState.RUNNING, JobState.QUEUED
        return self.store.query(
            f"select * from jobs {where} order by case state when ? then 0 when ? then 1 else 2 end,"
            " case when state = ? then priority else 0 end,"
            " case when state = ? and coalesce(preemptions, 0) > 0 then 0 else 1 end,"
            " case when state in (?, ?) then created_at else -finished_at end limit ?",
            (*states, run, queued, queued, queued, run, queued, limit),
        )

    def latest_of_study(self, study_uid: str) -> dict[str, Any] | None:
        """The study's most recently created job."""
        rows = self.store.query(
            "select * from jobs where study_uid = ? order by created_at desc limit 1", (study_uid,)
        )
        return rows[0] if rows else None

    def count_by_state(self) -> dict[str, int]:
        """Jobs per state, every state present."""
        counts = {str(state): 0 for state in JOB_STATES}
        for row in self.store.query("select state, count(*) as n from jobs group by state"):
            counts[row["state"]] = int(row["n"])
        return counts

    def duration_histogram(self, buckets: Sequence[float]) -> list[dict[str, Any]]:
        """Lease-to-success seconds of succeeded jobs per pipeline (``label``, ``n``, ``total``, ``b<i>``)."""
        return self._histogram("pipeline", "(finished_at - started_at)", "state = ? and started_at > 0",
                               (JobState.SUCCEEDED,), buckets)

    def recent_results(self, pipeline: str, limit: int) -> list[dict[str, Any]]:
        """The ``result`` summaries of the pipeline's latest succeeded jobs."""
        rows = self.store.query(
            "select result from jobs where state = ? and pipeline = ? order by finished_at desc limit ?",
            (JobState.SUCCEEDED, pipeline, limit),
        )
        results = []
        for row in rows:
            try:
                results.append(json.loads(row["result"] or "{}"))
            except ValueError:
                continue
        return results
