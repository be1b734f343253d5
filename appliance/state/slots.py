"""The ``slots`` table: one row per device slot, its job and busy time (the scheduler's board)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from appliance.state._table import Table

__all__ = ["SlotsTable"]


class SlotsTable(Table):
    name = "slots"

    def register(self, slots: Sequence[tuple[str, str]], now: float, replace: bool = True) -> None:
        """Idle rows for ``(slot, device)`` pairs (the previous process's rows go first when ``replace``)."""
        with self.store.atomic() as db:
            if replace:
                db.execute("delete from slots")
            for slot, device in slots:
                db.execute(
                    "insert or replace into slots (name, device, job_id, busy_since, busy_seconds, up_since,"
                    " jobs_run, preemptions, resumes) values (?, ?, '', 0, 0, ?, 0, 0, 0)",
                    (slot, device, now),
                )

    def started(self, slot: str, job_id: str, now: float, resumed: bool) -> None:
        with self.store.atomic() as db:
            db.execute(
                "update slots set job_id = ?, busy_since = ?, resumes = resumes + ? where name = ?",
                (job_id, now, int(resumed), slot),
            )

    def ended(self, slot: str, job_id: str, now: float, preempted: bool) -> None:
        with self.store.atomic() as db:
            db.execute(
                "update slots set job_id = '', busy_seconds = busy_seconds + max(0, ? - busy_since), busy_since = 0,"
                " jobs_run = jobs_run + 1, preemptions = preemptions + ? where name = ? and job_id = ?",
                (now, int(preempted), slot, job_id),
            )

    def with_jobs(self) -> list[dict[str, Any]]:
        """Every slot with its job's pipeline, priority and progress, in registration order."""
        if not self.store.db["slots"].exists():
            return []
        return self.store.query(
            "select s.*, j.pipeline, j.priority, j.progress_done, j.progress_total from slots s"
            " left join jobs j on j.id = s.job_id and s.job_id != '' order by s.rowid"
        )
