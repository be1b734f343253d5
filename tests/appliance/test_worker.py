"""The inference worker on the real queue and store, with in-process pipeline, report and delivery callables."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import JobFailed
from appliance.findings import EngineIdentity, Finding, SourceImage, StudyResult
from appliance.jobs import Job, JobQueue
from appliance.state import StateStore
from appliance.worker import EngineCache, JobInterrupted, JobPreempted, ProgressFn, Worker, summarize
from engines.errors import EngineUnavailable
from tests.appliance._spooled import Clock

ENGINE = EngineIdentity("pathology_slide", "1.0.0", "demo slide", "demo", "fp32", "ab" * 32, demo=True)


def _result(job: Job, tmp: Path) -> StudyResult:
    source = SourceImage(job.study_uid, job.series_uids[0], "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.77.1.6", tmp)
    finding = Finding("pathology", 0.75, 0.5, ENGINE, (source,), tiles_scored=40)
    return StudyResult(job.id, job.study_uid, (finding,))


class FakeEngine:
    def __init__(self, version: str) -> None:
        self.manifest = type("M", (), {"version": version})()
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeSource:
    """Stands in for engines.registry.Registry: an active version per task."""

    def __init__(self) -> None:
        self.active = {"pathology_slide": "1.0.0"}
        self.loaded: list[FakeEngine] = []

    def active_versions(self) -> dict[str, str]:
        return dict(self.active)

    def load_active(self, task: str, cpu_threads: int = 0, device: str | None = None) -> FakeEngine:
        engine = FakeEngine(self.active[task])
        self.loaded.append(engine)
        return engine


class Harness:
    def __init__(self, store: StateStore, tmp: Path, clock: Clock, max_attempts: int = 3) -> None:
        self.store, self.tmp = store, tmp
        self.queue = JobQueue(store, lease_seconds=30, max_attempts=max_attempts, clock=clock)
        self.calls: list[str] = []
        self.delivered: list[tuple[str, list[str]]] = []
        self.done = threading.Event()
        self.behaviour: Any = None
        self.source = FakeSource()
        self.engines = EngineCache(self.source)

    def pipeline(self, job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> StudyResult:
        self.calls.append(job.id)
        engines.get("pathology_slide")
        if self.behaviour is not None:
            self.behaviour(progress)
        for n in range(1, 5):
            progress(n, 4)
        return _result(job, self.tmp)

    def report(self, result: StudyResult, job: Job) -> Sequence[Path]:
        path = self.tmp / f"{job.id}.dcm"
        path.write_bytes(b"SR")
        return [path]

    def deliver(self, job: Job, files: Sequence[Path]) -> int:
        self.delivered.append((job.id, [f.name for f in files]))
        self.done.set()
        return len(files)

    def worker(self, owner: str = "w1", data_dir: Path | None = None) -> Worker:
        return Worker(
            self.store, self.queue, {"pathology": self.pipeline}, self.report, self.deliver, self.engines,
            poll_seconds=0.05, owner=owner, data_dir=data_dir,
        )


@pytest.fixture
def harness(data_dir: Path, tmp_path: Path) -> Harness:
    return Harness(StateStore.for_data_dir(data_dir), tmp_path, Clock())


def test_job_runs_to_completion_once(harness: Harness) -> None:
    ident, _ = harness.queue.enqueue("pathology", "1.2", ["1.2.3"])
    worker = harness.worker()
    worker.start()
    try:
        assert harness.done.wait(10), "the job was not delivered"
    finally:
        worker.stop()
        worker.stop()
    job = harness.queue.get(ident)
    assert job.state == "succeeded" and job.attempts == 1
    assert job.result["findings"][0]["probability"] == 0.75 and job.result["findings"][0]["positive"] is True
    assert job.result["tiles_scored"] == 40 and job.result["deliveries"] == 1
    assert (job.progress_done, job.progress_total) == (4, 4)
    assert harness.calls == [ident]
    assert harness.delivered == [(ident, [f"{ident}.dcm"])]
    assert worker.run_once() is None


def test_dead_worker_loses_lease_and_job_completes_once(harness: Harness) -> None:
    ident, _ = harness.queue.enqueue("pathology", "1.2", ["1.2.3"])
    assert harness.queue.lease("crashed-worker") is not None  # leased, then the process was killed
    worker = harness.worker("w2")
    assert worker.run_once() is None, "the lease has not expired yet"
    harness.queue.clock.advance(31)  # type: ignore[attr-defined]
    assert worker.run_once() is not None
    assert harness.queue.get(ident).state == "succeeded"
    assert harness.calls == [ident] and len(harness.delivered) == 1


def test_engine_sessions_stay_loaded_and_reload_on_activation(harness: Harness) -> None:
    for n in range(2):
        harness.queue.enqueue("pathology", f"1.{n}", [f"1.{n}.1"])
    worker = harness.worker()
    assert worker.run_once() and worker.run_once()
    assert harness.engines.loads == 1, "one session serves both jobs"
    harness.source.active["pathology_slide"] = "1.1.0"
    harness.queue.enqueue("pathology", "1.9", ["1.9.1"])
    assert worker.run_once()
    assert harness.engines.loads == 2 and harness.source.loaded[0].closed
    assert harness.engines.loaded() == {"pathology_slide": "1.1.0"}


def test_transient_failures_retry_then_fail_with_reason(data_dir: Path, tmp_path: Path) -> None:
    harness = Harness(StateStore.for_data_dir(data_dir), tmp_path, Clock(), max_attempts=2)

    def flaky(_progress: ProgressFn) -> None:
        raise OSError("spool read failed")

    harness.behaviour = flaky
    ident, _ = harness.queue.enqueue("pathology", "1.2", ["1.2.3"])
    worker = harness.worker()
    reported: list[tuple[str, str]] = []
    worker.on_study_failure = lambda job, reason: reported.append((job.id, reason))
    assert worker.run_once() is not None
    assert harness.queue.get(ident).state == "queued" and reported == []  # it will be tried again
    harness.queue.clock.advance(120)  # type: ignore[attr-defined]
    assert worker.run_once() is not None
    job = harness.queue.get(ident)
    assert job.state == "failed" and job.reason == "failed after 2 attempt(s): OSError: spool read failed"
    assert harness.delivered == []
    assert reported == [(ident, "the analysis failed on every attempt (OSError)")]  # PACS is told, once


@pytest.mark.parametrize(
    ("pipeline", "reason"),
    [("pathology", "slide has no tissue"), ("unknown_pipeline", "no pipeline named 'unknown_pipeline'; known: pathology")],
)
def test_permanent_failure(harness: Harness, pipeline: str, reason: str) -> None:
    def no_tissue(_progress: ProgressFn) -> None:
        raise JobFailed("slide has no tissue")

    harness.behaviour = no_tissue
    ident, _ = harness.queue.enqueue(pipeline, "1.2", ["1.2.3"])
    worker = harness.worker()
    reported: list[tuple[str, str]] = []
    worker.on_study_failure = lambda job, why: reported.append((job.id, why))
    assert worker.run_once() is not None
    job = harness.queue.get(ident)
    assert job.state == "failed" and job.reason == reason and job.attempts == 1
    assert reported == [(ident, reason)]  # the "AI result not available" SR carries the reason


def test_stop_releases_the_running_job(harness: Harness) -> None:
    started = threading.Event()

    def endless(progress: ProgressFn) -> None:
        started.set()
        while True:
            progress(1, 1000)
            threading.Event().wait(0.01)

    harness.behaviour = endless
    ident, _ = harness.queue.enqueue("pathology", "1.2", ["1.2.3"])
    worker = harness.worker()
    worker.start()
    assert started.wait(10)
    assert worker.current_job == ident
    worker.stop(timeout=10)
    job = harness.queue.get(ident)
    assert job.state == "queued" and job.attempts == 0 and "stopping" in job.reason
    assert harness.delivered == []


def test_progress_raises_when_lease_lost(harness: Harness) -> None:
    caught: list[BaseException] = []

    def steal(progress: ProgressFn) -> None:
        harness.store.db.conn.execute("update jobs set lease_owner = 'other'")
        try:
            progress(1, 1)
        except JobInterrupted as exc:
            caught.append(exc)
            raise

    harness.behaviour = steal
    harness.queue.enqueue("pathology", "1.2", ["1.2.3"])
    assert harness.worker().run_once() is not None
    assert caught and "lost its lease" in str(caught[0])
    assert harness.delivered == []


def test_summary_has_no_uids(tmp_path: Path) -> None:
    job = Job("Jabc", "pathology", "1.2.840.99", ("1.2.840.99.1",), 5, "running", 1, "w", 0, 0, 0, "", {}, 0, 0, 0)
    summary = summarize(_result(job, tmp_path), [tmp_path / "x.dcm"], 1, {"pipeline": 1.0})
    assert "1.2.840.99" not in repr(summary)


def test_default_deliver_queues_each_file_for_each_destination(data_dir: Path, tmp_path: Path) -> None:
    import shutil

    from pydicom.data import get_testdata_file

    from appliance.config import parse_config
    from appliance.inference import default_deliver

    config = parse_config({"node": {"data_dir": str(data_dir)}, "destinations": [
        {"name": "pacs", "ae_title": "PACS"}, {"name": "archive", "ae_title": "ARCH"}]})
    store = StateStore.for_data_dir(data_dir)
    sr = tmp_path / "report.dcm"
    shutil.copy(get_testdata_file("MR_small.dcm"), sr)
    job = Job("Jabc", "pathology", "1.2", ("1.2.3",), 5, "running", 1, "w", 0, 0, 0, "", {}, 0, 0, 0)
    deliver = default_deliver(config, store)
    assert deliver(job, [sr]) == 2
    assert deliver(job, [sr]) == 2, "idempotent: the same rows"
    rows = store.query("select destination, state, job_id from deliveries order by destination")
    assert [(r["destination"], r["state"], r["job_id"]) for r in rows] == [("archive", "pending", "Jabc"),
                                                                          ("pacs", "pending", "Jabc")]


def test_components_run_under_the_service(data_dir: Path) -> None:
    """Assembly, worker and web built by their factories start and stop inside appliance.service."""
    import httpx

    from appliance.assembly import assembly_component
    from appliance.config import parse_config
    from appliance.service import Service
    from appliance.web import web_component
    from appliance.inference import worker_component

    config = parse_config({"node": {"data_dir": str(data_dir), "min_free_bytes": 1}, "web": {"port": 0}})
    store = StateStore.for_data_dir(data_dir)
    ident, _ = JobQueue(store).enqueue("no_such_pipeline", "1.2", ["1.2.3"])
    service = Service(config, factories=[assembly_component, worker_component, web_component], store=store)
    service.start()
    try:
        names = [c.name for c in service.components]
        assert names == ["assembly", "worker", "web"]
        web = service.components[2]
        assert httpx.get(f"{web.url}/healthz", timeout=10).status_code == 200  # type: ignore[attr-defined]
        worker = service.components[1]
        worker.notify()  # type: ignore[attr-defined]
        deadline = threading.Event()
        for _ in range(200):
            if JobQueue(store).get(ident).state == "failed":
                break
            deadline.wait(0.05)
        assert JobQueue(store).get(ident).reason == (
            "no pipeline named 'no_such_pipeline'; known: breast_mri, pathology"
        )
    finally:
        service.stop()
        service.stop()


def test_start_takes_back_leases_of_dead_workers_on_this_host(harness: Harness) -> None:
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    host = socket.gethostname()
    owners = {"dead": f"{host}:{int(gone.stdout)}:worker", "alive": f"{host}:{os.getppid()}:worker",
              "remote": f"other-host.example:{int(gone.stdout)}:worker"}
    for name, owner in owners.items():
        harness.queue.enqueue("pathology", f"1.2.{len(name)}", ["1.2.3"], job_id=f"J{name}")
        assert harness.queue.lease(owner) is not None
    worker = harness.worker(owner=f"{host}:{os.getpid()}:worker")
    worker.start()
    worker.stop()
    states = {name: harness.queue.get(f"J{name}").state for name in owners}
    assert states["dead"] in ("queued", "succeeded"), "a killed worker's job is taken back at start"
    assert states["alive"] == "running" and states["remote"] == "running", "live or remote leases wait for expiry"


@pytest.mark.parametrize("wrapped", [False, True])
def test_unreachable_engine_defers_the_job_without_counting_attempts(harness: Harness, wrapped: bool) -> None:
    def unreachable(_progress: ProgressFn) -> None:
        if not wrapped:
            raise EngineUnavailable("every Triton endpoint is down")
        try:
            raise EngineUnavailable("every Triton endpoint is down")
        except EngineUnavailable as exc:
            raise JobFailed("scoring the slide failed") from exc  # a pipeline's wrapping: still not the study's fault

    harness.behaviour = unreachable
    ident, _ = harness.queue.enqueue("pathology", "1.2", ["1.2.3"])
    worker = harness.worker()
    for _ in range(4):  # past max_attempts (3): still waiting, never failed
        assert worker.run_once() is not None
        job = harness.queue.get(ident)
        assert job.state == "queued" and job.attempts == 0
        assert job.reason == "engine unavailable, waiting: every Triton endpoint is down"
        assert worker.run_once() is None, "it waits before the next try"
        harness.queue.clock.advance(16)  # type: ignore[attr-defined]
    harness.behaviour = None
    assert worker.run_once() is not None and harness.queue.get(ident).state == "succeeded"


@pytest.mark.parametrize(
    ("error", "state", "kept"),
    [(None, "succeeded", False), (JobFailed("slide has no tissue"), "failed", False),
     (OSError("disk hiccup"), "queued", True), (JobPreempted("yield"), "queued", True)],
)
def test_work_directory_lives_until_the_job_ends_for_good(
    harness: Harness, data_dir: Path, error: BaseException | None, state: str, kept: bool
) -> None:
    seen: list[Path] = []

    def checkpoint(_progress: ProgressFn) -> None:
        job = harness.queue.get(harness.calls[-1])
        work = data_dir / "work" / job.id
        work.mkdir(parents=True)
        (work / "embeddings.npy").write_bytes(b"x")
        seen.append(work)
        if error is not None:
            raise error

    harness.behaviour = checkpoint
    ident, _ = harness.queue.enqueue("pathology", "1.2", ["1.2.3"])
    original = harness.pipeline

    def pipeline(job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> StudyResult:
        assert job.work_dir == data_dir / "work" / ident, "the pipeline gets <data_dir>/work/<job id>"
        return original(job, store, engines, progress)

    worker = harness.worker(data_dir=data_dir)
    worker.pipelines["pathology"] = pipeline
    assert worker.run_once() is not None
    assert harness.queue.get(ident).state == state
    assert seen and seen[0].exists() == kept


def test_request_yield_stops_the_job_at_its_next_batch_with_work_left(harness: Harness) -> None:
    worker = harness.worker()
    asked: list[bool] = []

    def ask(progress: ProgressFn) -> None:
        job_id = worker.current_job
        assert job_id is not None
        assert not worker.request_yield("Jnot-this-one")
        asked.append(worker.request_yield(job_id))
        progress(4, 4)  # the last batch: nothing left to save, it is not interrupted there

    harness.behaviour = ask
    ident, _ = harness.queue.enqueue("pathology", "1.2", ["1.2.3"])
    assert worker.run_once() is not None
    assert asked == [True]
    job = harness.queue.get(ident)
    assert job.state == "queued" and job.preemptions == 1 and job.attempts == 0
    assert job.reason == f"job {ident} yielded its slot to more urgent work at 1 of 4"
    assert (job.progress_done, job.progress_total) == (1, 4), "progress saved at the boundary"
    assert not worker.yielding, "the request ends with the job"
