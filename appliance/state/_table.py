"""What every table class shares: its store, and SQL fragments built from state tuples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.state.store import StateStore

__all__ = ["Table", "marks"]


def marks(values: Sequence[Any]) -> str:
    """``?, ?, ?``: one placeholder per value."""
    return ", ".join("?" for _ in values)


class Table:
    """A table of the store; its subclass owns every SQL statement on it."""

    name = ""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def count(self) -> int:
        """How many rows the table holds."""
        return int(self.store.query(f"select count(*) as n from {self.name}")[0]["n"])

    def _histogram(
        self, label: str, value: str, where: str, params: tuple[Any, ...], buckets: Sequence[float]
    ) -> list[dict[str, Any]]:
        """Per ``label``: ``n``, ``total`` of ``value`` and ``b<i>`` rows with ``value <= buckets[i]``."""
        sums = ", ".join(f"sum(case when {value} <= ? then 1 else 0 end) as b{i}" for i in range(len(buckets)))
        return self.store.query(
            f"select {label} as label, count(*) as n, coalesce(sum({value}), 0) as total, {sums}"
            f" from {self.name} where {where} group by {label}",
            (*buckets, *params),
        )
