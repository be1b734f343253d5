"""The job queue on the real state store: leases, expiry, priorities, retries, release."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.errors import StateError
from appliance.jobs import JobQueue, backpressure, job_id_for, new_job_id
from appliance.state import StateStore
from tests.appliance._spooled import Clock


@pytest.fixture
def store(data_dir: Path) -> StateStore:
    return StateStore.for_data_dir(data_dir)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(store: StateStore, clock: Clock) -> JobQueue:
    return JobQueue(store, lease_seconds=10, max_attempts=3, clock=clock)


def test_ids_are_opaque() -> None:
    assert re.fullmatch(r"J[0-9a-f]{12}", new_job_id())
    ident = job_id_for("pathology", "1.2.3.4")
    assert re.fullmatch(r"J[0-9a-f]{12}", ident)
    assert ident == job_id_for("pathology", "1.2.3.4") != job_id_for("breast_mri", "1.2.3.4")
    assert "1.2.3.4" not in ident


def test_lease_then_succeed_runs_once(queue: JobQueue) -> None:
    ident, created = queue.enqueue("pathology", "1.2", ["1.2.3"], priority=5)
    assert created
    job = queue.lease("w1")
    assert job is not None and job.id == ident and job.state == "running" and job.attempts == 1
    assert job.series_uids == ("1.2.3",)
    assert queue.lease("w2") is None
    assert queue.progress(ident, "w1", 3, 10)
    assert (queue.get(ident).progress_done, queue.get(ident).progress_total) == (3, 10)
    assert queue.succeed(ident, "w1", {"probability": 0.5})
    done = queue.get(ident)
    assert done.state == "succeeded" and done.result == {"probability": 0.5} and done.progress_done == 10
    assert queue.lease("w1") is None
    assert not queue.succeed(ident, "w1", {}), "a finished job cannot be finished again"


def test_enqueue_same_id_is_idempotent(queue: JobQueue, store: StateStore) -> None:
    ident = job_id_for("breast_mri", "9.9")
    assert queue.enqueue("breast_mri", "9.9", ["9.9.1"], job_id=ident) == (ident, True)
    assert queue.enqueue("breast_mri", "9.9", ["9.9.1"], job_id=ident) == (ident, False)
    assert store.query("select count(*) as n from jobs")[0]["n"] == 1


def test_lease_expiry_returns_job_to_queue(queue: JobQueue, clock: Clock) -> None:
    ident, _ = queue.enqueue("pathology", "1.2", ["1.2.3"])
    assert queue.lease("dead-worker") is not None
    clock.advance(5)
    assert queue.heartbeat(ident, "dead-worker")  # extends to t+15
    clock.advance(9)
    assert queue.lease("w2") is None, "the lease was renewed and has not expired"
    clock.advance(7)  # the dead worker stopped beating
    job = queue.lease("w2")
    assert job is not None and job.id == ident and job.attempts == 2 and job.lease_owner == "w2"
    assert not queue.heartbeat(ident, "dead-worker"), "the old owner lost its lease"
    assert not queue.succeed(ident, "dead-worker", {})
    assert queue.succeed(ident, "w2", {})


def test_lease_expiry_after_last_attempt_fails(store: StateStore, clock: Clock) -> None:
    queue = JobQueue(store, lease_seconds=1, max_attempts=2, clock=clock)
    ident, _ = queue.enqueue("pathology", "1.2", ["1.2.3"])
    for _ in range(2):
        assert queue.lease("w") is not None
        clock.advance(2)
    assert queue.expire_leases() == 1
    job = queue.get(ident)
    assert job.state == "failed" and re.search(r"lease expired on attempt 2 of 2", job.reason)


def test_urgent_overtakes_routine_then_fifo(queue: JobQueue, clock: Clock) -> None:
    routine = []
    for n in range(3):
        routine.append(queue.enqueue("pathology", f"1.{n}", [f"1.{n}.1"], priority=5)[0])
        clock.advance(1)
    urgent, _ = queue.enqueue("breast_mri", "2.1", ["2.1.1"], priority=0)
    order = []
    while (job := queue.lease("w")) is not None:
        order.append(job.id)
        queue.succeed(job.id, "w", {})
    assert order == [urgent, *routine]


def test_bounded_retries_then_failed_with_reason(queue: JobQueue, clock: Clock) -> None:
    ident, _ = queue.enqueue("pathology", "1.2", ["1.2.3"])
    states = []
    for _ in range(3):
        job = queue.lease("w")
        assert job is not None
        states.append(queue.fail(ident, "w", "OSError: disk hiccup", transient=True))
        assert queue.lease("w") is None, "a retried job waits for its delay"
        clock.advance(120)
    assert states == ["queued", "queued", "failed"]
    job = queue.get(ident)
    assert job.state == "failed" and job.attempts == 3
    assert job.reason == "failed after 3 attempt(s): OSError: disk hiccup"


def test_permanent_failure_is_not_retried(queue: JobQueue) -> None:
    ident, _ = queue.enqueue("pathology", "1.2", ["1.2.3"])
    assert queue.lease("w") is not None
    assert queue.fail(ident, "w", "slide has no tissue") == "failed"
    assert queue.get(ident).reason == "slide has no tissue"
    assert queue.fail(ident, "w", "again") is None


def test_release_does_not_count_the_attempt(queue: JobQueue) -> None:
    ident, _ = queue.enqueue("pathology", "1.2", ["1.2.3"])
    assert queue.lease("w") is not None
    assert queue.release(ident, "w")
    job = queue.get(ident)
    assert job.state == "queued" and job.attempts == 0 and job.lease_owner == ""
    again = queue.lease("w2")
    assert again is not None and again.attempts == 1


def test_preempted_job_goes_back_ahead_of_its_peers(queue: JobQueue, clock: Clock) -> None:
    first, _ = queue.enqueue("pathology", "1.1", ["1.1.1"], priority=5)
    clock.advance(1)
    peer, _ = queue.enqueue("pathology", "1.2", ["1.2.1"], priority=5)
    assert queue.lease("w").id == first  # type: ignore[union-attr]
    clock.advance(1)
    urgent, _ = queue.enqueue("breast_mri", "2.1", ["2.1.1"], priority=0)
    assert queue.preempt(first, "w", "yielded to urgent work")
    assert not queue.preempt(first, "w", "twice"), "only the lease holder preempts, once"
    assert [j.id for j in queue.ready()] == [urgent, first, peer]
    assert [j.id for j in queue.recent(states=("queued",))] == [urgent, first, peer]
    assert queue.lease("w").id == urgent  # type: ignore[union-attr]
    clock.advance(7)
    again = queue.lease("w")
    assert again is not None and again.id == first
    assert again.attempts == 1 and again.preemptions == 1, "a yield is not a failed attempt"
    assert again.yielded_seconds == pytest.approx(7.0), "the time it spent back in the queue"


def test_defer_waits_without_counting_an_attempt(queue: JobQueue, clock: Clock) -> None:
    ident, _ = queue.enqueue("pathology", "1.2", ["1.2.3"])
    for _ in range(5):  # more than max_attempts: an unreachable engine never fails the study
        assert queue.lease("w") is not None
        assert queue.defer(ident, "w", "engine unavailable", 15.0)
        assert queue.lease("w") is None, "deferred for 15 s"
        clock.advance(16)
    job = queue.get(ident)
    assert job.state == "queued" and job.attempts == 0 and job.reason == "engine unavailable"


def test_lease_passes_over_excluded_pipelines(queue: JobQueue, clock: Clock) -> None:
    urgent, _ = queue.enqueue("breast_mri", "2.1", ["2.1.1"], priority=0)
    routine, _ = queue.enqueue("pathology", "1.1", ["1.1.1"], priority=5)
    assert queue.lease("gpu-slot", exclude={"breast_mri"}).id == routine  # type: ignore[union-attr]
    assert queue.lease("gpu-slot", exclude={"breast_mri"}) is None
    assert queue.lease("remote-lane").id == urgent  # type: ignore[union-attr]


@pytest.mark.parametrize(("lease_seconds", "attempts", "message"), [(0, 1, "lease_seconds"), (1, 0, "max_attempts")])
def test_bad_settings_rejected(store: StateStore, lease_seconds: float, attempts: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JobQueue(store, lease_seconds=lease_seconds, max_attempts=attempts)


def test_bad_priority_and_unknown_job(queue: JobQueue) -> None:
    with pytest.raises(ValueError, match="priority must lie in 0..9"):
        queue.enqueue("pathology", "1", ["1.1"], priority=10)
    with pytest.raises(StateError, match="no job with id 'Jnope'"):
        queue.get("Jnope")


def test_backpressure_and_recent(queue: JobQueue, store: StateStore) -> None:
    for n in range(3):
        queue.enqueue("pathology", f"1.{n}", [f"1.{n}.1"])
    assert backpressure(store, 3) == {"queued": 3, "max_queue": 3, "over": True}
    assert backpressure(store, 4)["over"] is False
    running = queue.lease("w")
    assert running is not None
    assert queue.depth() == 2
    assert queue.recent()[0].id == running.id
