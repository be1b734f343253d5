"""The state store's schema: migrations applied in order by sqlite-utils' :class:`~sqlite_utils.migrations.Migrations`.

A migration is a function registered with :func:`migration` under its number
(each engineer's number is assigned, so migrations stay independent); it runs
in its own savepoint together with the record of it having been applied.
Databases made before the store used sqlite-utils' migrations kept only
``meta.schema_version``; :func:`apply_migrations` records the migrations they
already have as applied, so they open and upgrade. ``meta.schema_version``
still holds the newest applied number, and a database newer than this
software is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils
from sqlite_utils.migrations import Migrations

from appliance.errors import StateError

__all__ = ["MIGRATION_SET", "Migration", "apply_migrations", "migration", "schema_version"]

Migration = Callable[[sqlite_utils.Database], None]
MIGRATION_SET = "appliance"  #: the sqlite-utils migration set name
_MIGRATIONS: dict[int, Migration] = {}


def migration(version: int) -> Callable[[Migration], Migration]:
    """Register schema migration number ``version`` (applied in increasing order)."""

    def register(func: Migration) -> Migration:
        if version in _MIGRATIONS:
            raise ValueError(f"schema migration {version} is registered twice ({func.__name__})")
        _MIGRATIONS[version] = func
        return func

    return register


def _name(version: int, func: Migration) -> str:
    return f"{version:04d}_{func.__name__.lstrip('_')}"


@migration(1)
def _initial_schema(db: sqlite_utils.Database) -> None:
    _received_tables(db)
    _work_tables(db)


def _received_tables(db: sqlite_utils.Database) -> None:
    """``studies``, ``series`` and ``instances``: what the node received."""
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


def _work_tables(db: sqlite_utils.Database) -> None:
    """``jobs``, ``deliveries``, ``audit`` and ``clinical``: the work and what came of it."""
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


def schema_version(db: sqlite_utils.Database) -> int:
    """The newest migration number applied to ``db`` (0 for an empty database)."""
    if not db["meta"].exists():
        return 0
    rows = list(db.query("select value from meta where key = 'schema_version'"))
    return int(rows[0]["value"]) if rows else 0


def apply_migrations(db: sqlite_utils.Database, where: str) -> None:
    """Bring ``db`` (the file at ``where``) to the newest schema; call inside one transaction."""
    if not db["meta"].exists():
        db.table("meta").create({"key": str, "value": str}, pk="key")
    current = schema_version(db)
    newest = max(_MIGRATIONS)
    if current > newest:
        raise StateError(f"state database {where!r} has schema version {current}, newer than this software's {newest}")
    migrations = Migrations(MIGRATION_SET)
    for version in sorted(_MIGRATIONS):
        migrations(name=_name(version, _MIGRATIONS[version]))(_MIGRATIONS[version])
    if current and not migrations.applied(db):
        _adopt_legacy(db, migrations, current)
    migrations.apply(db)
    db.table("meta").upsert({"key": "schema_version", "value": str(newest)}, pk="key")


def _adopt_legacy(db: sqlite_utils.Database, migrations: Migrations, current: int) -> None:
    """Record migrations 1..``current`` as applied in a database versioned only by ``meta.schema_version``."""
    migrations.ensure_migrations_table(db)
    for version in sorted(v for v in _MIGRATIONS if v <= current):
        db.table(Migrations.migrations_table).insert(
            {"migration_set": MIGRATION_SET, "name": _name(version, _MIGRATIONS[version]), "applied_at": "legacy"}
        )
