"""The ``clinical`` table: the MRI pipeline's clinical variables per study key, as JSON."""

from __future__ import annotations

import json
import time
from typing import Any

from appliance.state._table import Table

__all__ = ["ClinicalTable"]


class ClinicalTable(Table):
    name = "clinical"

    def get(self, key: str) -> dict[str, Any]:
        """The stored record for ``key``; empty when there is none."""
        rows = self.store.query("select values_json from clinical where key = ?", (key,))
        return dict(json.loads(rows[0]["values_json"])) if rows else {}

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Replace the record for ``key``."""
        with self.store.atomic() as db:
            db.table("clinical").upsert(
                {"key": key, "values_json": json.dumps(record, sort_keys=True), "updated_at": time.time()}, pk="key"
            )
