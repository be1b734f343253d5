"""The state-store API: migrations of existing databases, transitions in one place, savepoints, the job hand-off."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.findings import StudyResult
from appliance.jobs import Job, JobQueue
from appliance.outbox import enqueue
from appliance.state import DeliveryState, JobState, SeriesState, StateStore, StudyState
from appliance.state.schema import MIGRATION_SET
from appliance.state.states import TRANSITIONS, allowed, sources
from appliance.worker import EngineCache, ProgressFn, Worker
from tests.appliance._spooled import Clock
from tests.appliance.test_worker import FakeSource, _result

LEGACY_DUMP = Path(__file__).parent / "data" / "state_schema3.sql"


def _applied(store: StateStore) -> list[str]:
    return [r["name"] for r in store.query(
        "select name from _sqlite_migrations where migration_set = ? order by id", (MIGRATION_SET,))]


def test_a_database_of_the_previous_store_opens_and_migrates(data_dir: Path) -> None:
    conn = sqlite3.connect(data_dir / "state.db")
    conn.executescript(LEGACY_DUMP.read_text())  # made by the store at commit 3672166 (meta.schema_version 3)
    conn.close()
    store = StateStore.for_data_dir(data_dir)
    assert _applied(store)[:3] == ["0001_initial_schema", "0002_scanned_headers_and_series_failures",
                                   "0003_scheduling"]
    assert store.schema_version >= 3
    assert store.counts()["jobs"][JobState.QUEUED] == 1 and store.counts()["deliveries"][DeliveryState.PENDING] == 1
    assert store.query("select action from audit")[0]["action"] == "engines.install"
    queue = JobQueue(store)
    job = queue.lease("w1")
    assert job is not None and job.id == "J000000000001" and job.state == JobState.RUNNING
    assert queue.succeed(job.id, "w1", {"ok": True})
    store.close()
    again = StateStore.for_data_dir(data_dir)  # reopening applies nothing twice
    assert _applied(again) == _applied(StateStore(data_dir / "fresh.db"))
    assert again.jobs.get("J000000000001") is not None
    again.close()


def test_a_new_database_records_every_migration_once(data_dir: Path) -> None:
    first = _applied(StateStore.for_data_dir(data_dir))
    assert first and first == sorted(first) and len(set(first)) == len(first)
    assert _applied(StateStore.for_data_dir(data_dir)) == first


def test_transitions_live_in_one_table() -> None:
    assert sources(SeriesState.ASSEMBLED) == (SeriesState.ROUTED,)
    assert set(sources(SeriesState.ROUTED)) == {SeriesState.OPEN}
    assert sources(JobState.RUNNING) == (JobState.QUEUED,) and sources(JobState.SUCCEEDED) == (JobState.RUNNING,)
    assert sources(DeliveryState.DEAD) == (DeliveryState.PENDING,)
    assert allowed(StudyState.OPEN, StudyState.ASSEMBLED) and not allowed(StudyState.ASSEMBLED, StudyState.OPEN)
    assert not allowed(JobState.SUCCEEDED, JobState.QUEUED) and not allowed(DeliveryState.DEAD, DeliveryState.PENDING)
    assert set(TRANSITIONS) == {SeriesState, StudyState, JobState, DeliveryState}


def test_a_finished_row_takes_no_further_transition(data_dir: Path) -> None:
    store = StateStore.for_data_dir(data_dir)
    queue = JobQueue(store)
    ident, _ = queue.enqueue("pathology", "1.2", ["1.2.3"])
    assert queue.lease("w1") is not None and queue.succeed(ident, "w1", {})
    assert not store.jobs.requeue(ident, "late", 0.0) and not store.jobs.fail(ident, "late", 0.0)
    assert queue.get(ident).state == JobState.SUCCEEDED
    [row] = enqueue(store, ident, data_dir / "x.dcm", "1.2.826.0.1.3680043.10.5", ["pacs"])
    store.deliveries.dead(row, "refused")
    store.deliveries.delivered(row, 1.0)  # a dead row stays dead
    assert store.deliveries.count_by_state() == {"pending": 0, "delivered": 0, "dead": 1}


def test_a_nested_atomic_is_a_savepoint(data_dir: Path) -> None:
    store = StateStore.for_data_dir(data_dir)
    with store.atomic():
        store.audit("t", "kept", "s")
        with pytest.raises(RuntimeError):
            with store.atomic():
                store.audit("t", "undone", "s")
                raise RuntimeError("inner")
    assert [r["action"] for r in store.query("select action from audit")] == ["kept"]


class _HandOff:
    """A worker whose deliver step queues real outbox rows, then does what the test asks."""

    def __init__(self, store: StateStore, tmp: Path) -> None:
        self.store, self.tmp = store, tmp
        self.queue = JobQueue(store, lease_seconds=30, clock=Clock())
        self.after_queueing = lambda job: None
        self.after_report = lambda job: None

    def pipeline(self, job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> StudyResult:
        return _result(job, self.tmp)

    def report(self, result: StudyResult, job: Job) -> Sequence[Path]:
        path = self.tmp / f"{job.id}.dcm"
        path.write_bytes(b"SR")
        self.after_report(job)
        return [path]

    def deliver(self, job: Job, files: Sequence[Path]) -> int:
        rows = len(enqueue(self.store, job.id, files[0], "1.2.826.0.1.3680043.10.7", ["pacs", "archive"]))
        self.after_queueing(job)
        return rows

    def run(self) -> Job:
        ident, _ = self.queue.enqueue("pathology", "1.2", ["1.2.3"])
        worker = Worker(self.store, self.queue, {"pathology": self.pipeline}, self.report, self.deliver,
                        EngineCache(FakeSource()), poll_seconds=0.05, owner="w1")
        assert worker.run_once() is not None
        return self.queue.get(ident)


def test_the_job_succeeds_together_with_its_delivery_rows(data_dir: Path, tmp_path: Path) -> None:
    hand_off = _HandOff(StateStore.for_data_dir(data_dir), tmp_path)
    job = hand_off.run()
    assert job.state == JobState.SUCCEEDED and job.result["deliveries"] == 2
    assert hand_off.store.deliveries.count_by_state()[DeliveryState.PENDING] == 2


def test_a_lease_lost_at_the_hand_off_queues_no_delivery(data_dir: Path, tmp_path: Path) -> None:
    hand_off = _HandOff(StateStore.for_data_dir(data_dir), tmp_path)
    hand_off.after_report = lambda job: hand_off.store.db.execute(  # another worker took the lease over
        "update jobs set lease_owner = 'other' where id = ?", (job.id,))
    job = hand_off.run()
    assert job.state == JobState.RUNNING and job.lease_owner == "other"
    assert hand_off.store.deliveries.count_by_state() == {"pending": 0, "delivered": 0, "dead": 0}


def test_a_failing_deliver_step_rolls_back_its_rows(data_dir: Path, tmp_path: Path) -> None:
    hand_off = _HandOff(StateStore.for_data_dir(data_dir), tmp_path)

    def boom(job: Job) -> None:
        raise OSError("disk gone")

    hand_off.after_queueing = boom
    job = hand_off.run()
    assert job.state == JobState.QUEUED and "disk gone" in job.reason
    assert hand_off.store.deliveries.count_by_state()[DeliveryState.PENDING] == 0
