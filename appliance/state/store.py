"""The state store: one SQLite database in WAL mode, written through sqlite-utils.

It is the queue (shared/DESIGN.md, "Data flow"): every hand-off is a row whose
state changes in one transaction, so a process killed at any point restarts
into a consistent state. Each table has a small class that owns its SQL
(:attr:`StateStore.series`, :attr:`~StateStore.jobs`, ...); the schema is
migrated by :mod:`appliance.state.schema`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from appliance.state.audit import AuditTable
from appliance.state.clinical import ClinicalTable
from appliance.state.deliveries import DeliveriesTable
from appliance.state.jobs import JobsTable
from appliance.state.schema import apply_migrations, schema_version
from appliance.state.series import InstancesTable, SeriesTable, StudiesTable
from appliance.state.slots import SlotsTable

__all__ = ["StateStore"]


class StateStore:
    """The appliance's SQLite state, safe to share between threads.

    Writes go through :meth:`atomic`, which serialises writers in this process
    and commits or rolls back as one transaction; a nested :meth:`atomic` is a
    savepoint of the outer one (sqlite-utils' :meth:`~sqlite_utils.Database.atomic`).
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
        self.instances = InstancesTable(self)
        self.series = SeriesTable(self)
        self.studies = StudiesTable(self)
        self.jobs = JobsTable(self)
        self.deliveries = DeliveriesTable(self)
        self.audit_log = AuditTable(self)
        self.slots = SlotsTable(self)
        self.clinical = ClinicalTable(self)
        with self.atomic() as db:
            apply_migrations(db, str(self.path))

    @classmethod
    def for_data_dir(cls, data_dir: Path | str) -> StateStore:
        """Open (creating if needed) ``data_dir/state.db``."""
        return cls(Path(data_dir) / "state.db")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return schema_version(self.db)

    @contextmanager
    def atomic(self) -> Iterator[sqlite_utils.Database]:
        """One transaction (a nested call is a savepoint in it); rolled back on any exception.

        The outermost call begins with ``BEGIN IMMEDIATE``: it takes SQLite's write
        lock up front (waiting up to the busy timeout), so a transaction that reads
        and then writes never fails on a snapshot another process made stale.
        """
        with self._lock:
            if self.db.conn.in_transaction:
                with self.db.atomic() as db:
                    yield db
                return
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.rollback()
                raise
            self.db.commit()

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Run a read query under the store's lock and return the rows as dicts."""
        with self._lock:
            return list(self.db.query(sql, params))

    def ping(self) -> None:
        """Raise when the database cannot answer a query (the health check)."""
        self.query("select 1")

    def audit(self, actor: str, action: str, subject: str, detail: dict[str, Any] | None = None) -> None:
        """Record an operator or system action (never patient data)."""
        self.audit_log.record(actor, action, subject, detail)

    def counts(self) -> dict[str, Any]:
        """Counts for ``appliance status``: instances, studies, jobs and deliveries by state."""
        return {
            "instances": self.instances.count(),
            "studies": self.studies.count(),
            "jobs": self.jobs.count_by_state(),
            "deliveries": self.deliveries.count_by_state(),
        }

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()
