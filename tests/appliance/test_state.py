from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.errors import StateError
from appliance.state import StateStore


def test_schema_is_versioned_and_wal(data_dir: Path) -> None:
    store = StateStore.for_data_dir(data_dir)
    assert store.schema_version >= 1
    mode = store.query("pragma journal_mode")[0]["journal_mode"]
    assert mode == "wal"
    for table in ("instances", "series", "studies", "jobs", "deliveries", "audit", "clinical"):
        assert store.db[table].exists(), table
    store.close()


def test_atomic_rolls_back_every_row(data_dir: Path) -> None:
    store = StateStore.for_data_dir(data_dir)
    with pytest.raises(RuntimeError, match="boom"):
        with store.atomic() as db:
            db["studies"].insert({"study_uid": "1.2.3", "first_received": 0.0, "last_received": 0.0, "state": "open"})
            with store.atomic() as inner:  # nested joins the outer transaction
                inner["audit"].insert({"at": 0.0, "actor": "t", "action": "a", "subject": "s", "detail": "{}"})
            raise RuntimeError("boom")
    assert store.counts()["studies"] == 0
    assert store.query("select count(*) as n from audit")[0]["n"] == 0
    store.close()


def test_reopen_keeps_rows_and_counts(data_dir: Path) -> None:
    store = StateStore.for_data_dir(data_dir)
    store.audit("engineer", "engines.install", "pathology_tile/1.0.0", {"sha256": "ab"})
    with store.atomic() as db:
        db["studies"].insert({"study_uid": "1.2.3", "first_received": 0.0, "last_received": 0.0, "state": "open"})
    store.close()
    again = StateStore.for_data_dir(data_dir)
    counts = again.counts()
    assert counts["studies"] == 1
    assert counts["jobs"] == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}
    assert again.query("select action from audit")[0]["action"] == "engines.install"
    again.close()


def test_newer_schema_is_refused(data_dir: Path) -> None:
    StateStore.for_data_dir(data_dir).close()
    conn = sqlite3.connect(data_dir / "state.db")
    conn.execute("update meta set value = '999' where key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="schema version 999, newer than"):
        StateStore.for_data_dir(data_dir)
