"""The ``audit`` table: operator and system actions (never patient data)."""

from __future__ import annotations

import json
import time
from typing import Any

from appliance.state._table import Table

__all__ = ["AuditTable"]


class AuditTable(Table):
    name = "audit"

    def record(self, actor: str, action: str, subject: str, detail: dict[str, Any] | None = None) -> None:
        """Append one action."""
        with self.store.atomic() as db:
            db.table("audit").insert(
                {"at": time.time(), "actor": actor, "action": action, "subject": subject,
                 "detail": json.dumps(detail or {}, sort_keys=True)}
            )
