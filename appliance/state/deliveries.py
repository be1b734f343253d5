"""The ``deliveries`` table: the outbox, one row per (destination, result file) in a :class:`DeliveryState`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from appliance.state._table import Table, marks
from appliance.state.states import DELIVERY_STATES, DeliveryState, sources

__all__ = ["DeliveriesTable"]


class DeliveriesTable(Table):
    """Statements on ``deliveries``."""

    name = "deliveries"

    def queue(self, job_id: str, path: str, sop_instance_uid: str, destinations: Sequence[str],
              now: float) -> list[int]:
        """A ``pending`` row per destination (one already there is kept); the ids of all of them."""
        rows = [
            {
                "job_id": job_id, "destination": name, "path": path, "sop_instance_uid": sop_instance_uid,
                "state": DeliveryState.PENDING, "attempts": 0, "next_attempt_at": now, "created_at": now,
                "delivered_at": None, "last_error": "",
            }
            for name in destinations
        ]
        with self.store.atomic() as db:
            if rows:
                db.table("deliveries").insert_all(rows, ignore=True)
            return [
                row["id"]
                for name in destinations
                for row in db.query(
                    "select id from deliveries where destination = ? and sop_instance_uid = ?",
                    [name, sop_instance_uid],
                )
            ]

    def lease(self, destination: str, limit: int, now: float, until: float) -> list[dict[str, Any]]:
        """Due pending rows for ``destination``, oldest first, hidden from other leases until ``until``."""
        with self.store.atomic() as db:
            rows = list(
                db.query(
                    "select d.id, d.destination, d.path, d.sop_instance_uid, d.attempts, d.created_at, "
                    "coalesce(j.study_uid, '') as study_uid from deliveries d left join jobs j on j.id = d.job_id "
                    "where d.state = ? and d.destination = ? and d.next_attempt_at <= ? "
                    "order by d.next_attempt_at, d.id limit ?",
                    [DeliveryState.PENDING, destination, now, limit],
                )
            )
            if rows:
                db.execute(
                    f"update deliveries set next_attempt_at = ? where id in ({marks(rows)})",
                    [until, *(r["id"] for r in rows)],
                )
        return rows

    def delivered(self, delivery_id: int, now: float) -> None:
        self._move(delivery_id, DeliveryState.DELIVERED, "delivered_at = ?, last_error = ''", [now])

    def retry(self, delivery_id: int, reason: str, next_attempt_at: float) -> None:
        """One more failed attempt; the row stays pending until ``next_attempt_at``."""
        with self.store.atomic() as db:
            db.execute(
                "update deliveries set attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                " where id = ? and state = ?",
                [reason, next_attempt_at, delivery_id, DeliveryState.PENDING],
            )

    def dead(self, delivery_id: int, reason: str) -> None:
        self._move(delivery_id, DeliveryState.DEAD, "last_error = ?", [reason])

    def _move(self, delivery_id: int, target: DeliveryState, sets: str, values: list[Any]) -> None:
        allowed = sources(target)
        with self.store.atomic() as db:
            db.execute(
                f"update deliveries set state = ?, attempts = attempts + 1, {sets}"
                f" where id = ? and state in ({marks(allowed)})",
                [target, *values, delivery_id, *allowed],
            )

    # ------------------------------------------------------------------ reading

    def pending_destinations(self) -> set[str]:
        """Destinations that have pending rows (configured or not)."""
        rows = self.store.query("select distinct destination from deliveries where state = ?",
                                (DeliveryState.PENDING,))
        return {r["destination"] for r in rows}

    def count_by_state(self, destination: str | None = None) -> dict[str, int]:
        """Rows per state (of one destination when given), every state present."""
        where, params = ("where destination = ?", (destination,)) if destination is not None else ("", ())
        counts = {str(state): 0 for state in DELIVERY_STATES}
        for row in self.store.query(f"select state, count(*) as n from deliveries {where} group by state", params):
            counts[row["state"]] = int(row["n"])
        return counts

    def count_by_destination(self) -> dict[tuple[str, str], int]:
        """(destination, state) -> rows, for the states a destination has rows in."""
        rows = self.store.query("select destination, state, count(*) as n from deliveries group by destination, state")
        return {(row["destination"], row["state"]): int(row["n"]) for row in rows}

    def last_error(self, destination: str) -> str:
        """The destination's most recent failure message ('' when none)."""
        rows = self.store.query(
            "select last_error from deliveries where destination = ? and coalesce(last_error, '') != ''"
            " order by id desc limit 1",
            (destination,),
        )
        return str(rows[0]["last_error"]) if rows else ""

    def latency_histogram(self, buckets: Sequence[float]) -> list[dict[str, Any]]:
        """Queued-to-delivered seconds per destination (``label``, ``n``, ``total``, ``b<i>``)."""
        return self._histogram("destination", "(delivered_at - created_at)", "state = ?",
                               (DeliveryState.DELIVERED,), buckets)
