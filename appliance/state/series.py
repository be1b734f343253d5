"""The ``instances``, ``series`` and ``studies`` tables: what the node received, and how far assembly got."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.state._table import Table, marks
from appliance.state.states import SeriesState, StudyState, sources

if TYPE_CHECKING:
    from appliance.state.store import StateStore

__all__ = ["InstancesTable", "SeriesTable", "StudiesTable"]

_INSTANCE_COLUMNS = (
    "sop_instance_uid", "sop_class_uid", "series_uid", "study_uid", "transfer_syntax", "path", "size", "calling_ae",
    "received_at", "header", "header_syntax",
)


class InstancesTable(Table):
    """One row per stored SOP instance: where its file is, and the header the node scanned."""

    name = "instances"

    def insert(self, row: Mapping[str, Any]) -> bool:
        """Add the instance (call inside :meth:`StateStore.atomic`); False when its SOP Instance UID is there already."""
        cursor = self.store.db.execute(
            f"insert or ignore into instances ({', '.join(_INSTANCE_COLUMNS)}) values ({marks(_INSTANCE_COLUMNS)})",
            [row[c] for c in _INSTANCE_COLUMNS],
        )
        return cursor.rowcount == 1

    def place(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """(study UID, series UID) of the stored instance, or None."""
        rows = self.store.query(
            "select study_uid, series_uid from instances where sop_instance_uid = ?", (sop_instance_uid,)
        )
        return (rows[0]["study_uid"], rows[0]["series_uid"]) if rows else None

    def first(self, series_uid: str) -> dict[str, Any] | None:
        """``path``, ``header`` and ``header_syntax`` of the series' first received instance."""
        rows = self.store.query(
            "select path, header, header_syntax from instances where series_uid = ?"
            " order by received_at, rowid limit 1",
            (series_uid,),
        )
        return rows[0] if rows else None

    def paths(self, series_uid: str) -> list[Path]:
        """The spool files of the series' instances, by SOP Instance UID."""
        rows = self.store.query(
            "select path from instances where series_uid = ? order by sop_instance_uid", (series_uid,)
        )
        return [Path(row["path"]) for row in rows]


class StudiesTable(Table):
    """One row per study: first and last instance received, ``open`` or ``assembled``."""

    name = "studies"

    def touch(self, study_uid: str, received_at: float) -> None:
        """Create the study ``open`` or move its ``last_received`` on (inside a transaction)."""
        self.store.db.execute(
            "insert into studies (study_uid, first_received, last_received, state) values (?, ?, ?, ?)"
            " on conflict (study_uid) do update set last_received = max(last_received, excluded.last_received)",
            (study_uid, received_at, received_at, StudyState.OPEN),
        )

    def assemble(self, study_uid: str) -> None:
        """The study's job exists."""
        _move(self.store, "studies", "study_uid", [study_uid], StudyState.ASSEMBLED)


class SeriesTable(Table):
    """One row per series: its state (:class:`SeriesState`), route, and instance count."""

    name = "series"

    def touch(self, series_uid: str, study_uid: str, modality: str, description: str, received_at: float) -> None:
        """Count one more instance of the series, creating it ``open`` (inside a transaction)."""
        self.store.db.execute(
            "insert into series (series_uid, study_uid, modality, series_description, instance_count,"
            " first_received, last_received, state) values (?, ?, ?, ?, 1, ?, ?, ?)"
            " on conflict (series_uid) do update set instance_count = instance_count + 1,"
            " last_received = max(last_received, excluded.last_received)",
            (series_uid, study_uid, modality, description, received_at, received_at, SeriesState.OPEN),
        )

    def open_uids(self) -> list[str]:
        """The series not routed yet."""
        rows = self.store.query("select series_uid from series where coalesce(state, ?) = ?",
                                (SeriesState.OPEN, SeriesState.OPEN))
        return [row["series_uid"] for row in rows]

    def route(self, series_uid: str, index: int | None) -> None:
        """An open series is ``routed`` to route ``index``, or ``unrouted`` when None."""
        with self.store.atomic():
            if index is None:
                _move(self.store, "series", "series_uid", [series_uid], SeriesState.UNROUTED, {"route": None})
            else:
                _move(self.store, "series", "series_uid", [series_uid], SeriesState.ROUTED, {"route": index})

    def fail(self, series_uid: str, reason: str) -> None:
        """An open series that cannot be routed is ``failed`` with ``reason``."""
        with self.store.atomic():
            _move(self.store, "series", "series_uid", [series_uid], SeriesState.FAILED, {"reason": reason[:200]})

    def assemble(self, series_uids: Sequence[str]) -> None:
        """The routed series' job exists (inside the transaction that queued it)."""
        _move(self.store, "series", "series_uid", series_uids, SeriesState.ASSEMBLED)

    def failed_count(self) -> int:
        """Series that could not be routed (their instances are kept)."""
        return int(self.store.query("select count(*) as n from series where state = ?", (SeriesState.FAILED,))[0]["n"])

    def failed_recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recently received ``failed`` series (modality, instances, last received, reason)."""
        return self.store.query(
            "select modality, instance_count, last_received, reason from series where state = ?"
            " order by last_received desc limit ?",
            (SeriesState.FAILED, limit),
        )

    def routed(self) -> list[dict[str, Any]]:
        """Routed series with their study's first instance time (``study_first``), oldest first."""
        return self.store.query(
            "select s.series_uid, s.study_uid, s.series_description, s.route, s.first_received, s.last_received,"
            " st.first_received as study_first from series s left join studies st on st.study_uid = s.study_uid"
            " where s.state = ? order by s.first_received, s.series_uid",
            (SeriesState.ROUTED,),
        )

    def routes_of(self, series_uids: Sequence[str]) -> set[int]:
        """The route indices the series were routed to."""
        rows = self.store.query(
            f"select route from series where series_uid in ({marks(series_uids)})", tuple(series_uids)
        )
        return {int(row["route"]) for row in rows if row["route"] is not None}


def _move(store: StateStore, table: str, key: str, keys: Sequence[str], target: SeriesState | StudyState,
          values: Mapping[str, Any] | None = None) -> None:
    """Set ``state = target`` (and ``values``) on the rows of ``keys`` whose state may become ``target``."""
    allowed = sources(target)
    initial = next(iter(type(target)))  # a row without a state is in its machine's first one
    extra = "".join(f", {column} = ?" for column in values or {})
    with store.atomic() as db:
        db.execute(
            f"update {table} set state = ?{extra} where {key} in ({marks(keys)})"
            f" and coalesce(state, ?) in ({marks(allowed)})",
            (target, *(values or {}).values(), *keys, initial, *allowed),
        )
