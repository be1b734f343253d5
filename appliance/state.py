"""The state store: one SQLite database in WAL mode, written through sqlite-utils.

It is the queue (shared/DESIGN.md, "Data flow"): every hand-off is a row whose
state changes in one transaction, so a process killed at any point restarts
into a consistent state. The schema is versioned; migrations are decorated
functions applied in order, each in its own transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from appliance.errors import StateError

Migration = Callable[[sqlite_utils.Database], None]
_MIGRATIONS: list[tuple[int, Migration]] = []

JOB_STATES = ("queued", "running", "succeeded", "failed")
DELIVERY_STATES = ("pending", "delivered", "dead")


def migration(version: int) -> Callable[[Migration], Migration]:
    """Register a schema migration; versions must be applied in increasing order."""

    def register(func: Migration) -> Migration:
        _MIGRATIONS.append((version, func))
        _MIGRATIONS.sort(key=lambda item: item[0])
        return func

    return register


@migration(1)
def _initial_schema(db: sqlite_utils.Database) -> None:
    db.table("studies").create(
        {"study_uid": str, "first_received": float, "last_received": float, "state": str},
        pk="study_uid",
    )
    db.table("series").create(
        {
            "series_uid": str,
            "study_uid": str,
            "modality": str,
            "series_description": str,
            "instance_count": int,
            "first_received": float,
            "last_received": float,
            "state": str,  # open | routed | unrouted
            "route": int,
        },
        pk="series_uid",
        foreign_keys=[("study_uid", "studies")],
    )
    db.table("instances").create(
        {
            "sop_instance_uid": str,
            "sop_class_uid": str,
            "series_uid": str,
            "study_uid": str,
            "transfer_syntax": str,
            "path": str,
            "size": int,
            "calling_ae": str,
            "received_at": float,
        },
        pk="sop_instance_uid",
        foreign_keys=[("series_uid", "series")],
    )
    db.table("instances").create_index(["series_uid"])
    db.table("jobs").create(
        {
            "id": str,
            "pipeline": str,
            "study_uid": str,
            "series_uids": str,  # JSON list
            "priority": int,  # lower runs first
            "state": str,
            "attempts": int,
            "lease_owner": str,
            "lease_expires": float,
            "progress_done": int,
            "progress_total": int,
            "reason": str,
            "result": str,  # JSON
            "created_at": float,
            "started_at": float,
            "finished_at": float,
        },
        pk="id",
    )
    db.table("jobs").create_index(["state", "priority", "created_at"])
    db.table("deliveries").create(
        {
            "id": int,
            "job_id": str,
            "destination": str,
            "path": str,
            "sop_instance_uid": str,
            "state": str,
            "attempts": int,
            "next_attempt_at": float,
            "created_at": float,
            "delivered_at": float,
            "last_error": str,
        },
        pk="id",
    )
    db.table("deliveries").create_index(["destination", "sop_instance_uid"], unique=True)
    db.table("deliveries").create_index(["state", "next_attempt_at"])
    db.table("audit").create(
        {"id": int, "at": float, "actor": str, "action": str, "subject": str, "detail": str},
        pk="id",
    )
    db.table("clinical").create({"key": str, "values_json": str, "updated_at": float}, pk="key")


@migration(2)
def _scanned_headers_and_series_failures(db: sqlite_utils.Database) -> None:
    """The node's scanned header per instance (routing reads it, not the file); why a series failed."""
    db.table("instances").add_column("header", bytes)
    db.table("instances").add_column("header_syntax", str)
    db.table("series").add_column("reason", str)


@migration(3)
def _scheduling(db: sqlite_utils.Database) -> None:
    """The scheduler (issue 21): preemption bookkeeping per job, one row per device slot for the dashboard."""
    jobs = db.table("jobs")
    jobs.add_column("preemptions", int, not_null_default=0)  # times the job yielded its slot to urgent work
    jobs.add_column("queued_at", float, not_null_default=0)  # when it last went back to the queue
    jobs.add_column("yielded_seconds", float, not_null_default=0)  # time spent queued after yielding
    db.table("slots").create(
        {
            "name": str,  # slot0, slot1, ... in configuration order
            "device": str,  # cpu | cuda:N | remote
            "job_id": str,  # the running job, '' when idle
            "busy_since": float,  # 0 when idle
            "busy_seconds": float,  # finished busy time since up_since
            "up_since": float,
            "jobs_run": int,
            "preemptions": int,
            "resumes": int,
        },
        pk="name",
    )


class StateStore:
    """The appliance's SQLite state, safe to share between threads.

    Writes go through :meth:`atomic`, which serialises writers in this process
    and commits or rolls back as one transaction.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA busy_timeout=30000")
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._depth = 0
        self._migrate()

    @classmethod
    def for_data_dir(cls, data_dir: Path | str) -> StateStore:
        """Open (creating if needed) ``data_dir/state.db``."""
        return cls(Path(data_dir) / "state.db")

    @property
    def schema_version(self) -> int:
        if not self.db["meta"].exists():
            return 0
        rows = list(self.db.query("select value from meta where key = 'schema_version'"))
        return int(rows[0]["value"]) if rows else 0

    def _migrate(self) -> None:
        with self.atomic() as db:
            if not db["meta"].exists():
                db.table("meta").create({"key": str, "value": str}, pk="key")
            current = self.schema_version
            newest = _MIGRATIONS[-1][0]
            if current > newest:
                raise StateError(
                    f"state database {str(self.path)!r} has schema version {current}, "
                    f"newer than this software's {newest}"
                )
            for version, func in _MIGRATIONS:
                if version > current:
                    func(db)
                    db.table("meta").upsert({"key": "schema_version", "value": str(version)}, pk="key")

    @contextmanager
    def atomic(self) -> Iterator[sqlite_utils.Database]:
        """One transaction (nested calls join the outer one); rolled back on any exception."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self.db.conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self.db
            except BaseException:
                self._depth -= 1
                if outer:
                    self.db.conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self.db.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Run a read query under the store's lock and return the rows as dicts."""
        with self._lock:
            return list(self.db.query(sql, params))

    def audit(self, actor: str, action: str, subject: str, detail: dict[str, Any] | None = None) -> None:
        """Record an operator or system action (never patient data)."""
        with self.atomic() as db:
            db.table("audit").insert(
                {
                    "at": time.time(),
                    "actor": actor,
                    "action": action,
                    "subject": subject,
                    "detail": json.dumps(detail or {}, sort_keys=True),
                }
            )

    def counts(self) -> dict[str, Any]:
        """Counts for ``appliance status``: instances, studies, jobs and deliveries by state."""
        jobs = {state: 0 for state in JOB_STATES}
        for row in self.query("select state, count(*) as n from jobs group by state"):
            jobs[row["state"]] = row["n"]
        deliveries = {state: 0 for state in DELIVERY_STATES}
        for row in self.query("select state, count(*) as n from deliveries group by state"):
            deliveries[row["state"]] = row["n"]
        return {
            "instances": self.query("select count(*) as n from instances")[0]["n"],
            "studies": self.query("select count(*) as n from studies")[0]["n"],
            "jobs": jobs,
            "deliveries": deliveries,
        }

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()
