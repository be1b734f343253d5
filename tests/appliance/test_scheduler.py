"""The scheduler on the real queue, registry and slide pipeline: device slots, priority order, preemption.

Slide jobs run the real pathology pipeline (``appliance.pipelines.PathologyPipeline``)
on signed tiny ONNX engines installed in a real registry, each slot with its own
ONNX Runtime sessions. A gate in the progress callback holds a job at a batch
boundary so the test can look at the slots while jobs run.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.config import parse_config
from appliance.findings import StudyResult
from appliance.inference import worker_component
from appliance.ingest import StoreSink
from appliance.jobs import Job, JobQueue
from appliance.pipelines import PathologyPipeline
from appliance.scheduler import Placement, Requirement, Scheduler
from appliance.slots import Device, SlotBoard, plan_devices
from appliance.state import StateStore
from appliance.worker import EngineCache, ProgressFn
from dicom_node.scp import InstanceRecord
from export.synthetic.slide import make_slide, write_dicom_wsi
from tests.pathology.test_submit import _install

WAIT = 60.0  # generous: the machine is shared


@pytest.fixture(scope="module")
def slide_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A small DICOM WSI (JPEG frames) with tissue; the tiny engine reads it at 1 um/px."""
    return write_dicom_wsi(make_slide(5, 2048, 2048, True), tmp_path_factory.mktemp("slide") / "wsi")


@pytest.fixture(scope="module")
def engines_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Signed tiny pathology engines, installed and active under ``<dir>/engines`` (copied per test)."""
    root = tmp_path_factory.mktemp("engines-data")
    _install(tmp_path_factory.mktemp("bundles"), root)
    return root


@pytest.fixture
def site(data_dir: Path, engines_dir: Path) -> Path:
    import shutil

    for name in ("engines", "trusted_keys"):
        shutil.copytree(engines_dir / name, data_dir / name)
    return data_dir


def _spool(store: StateStore, paths: Sequence[Path], n: int) -> list[str]:
    """``n`` slide series (the same files under distinct series UIDs); return their series UIDs."""
    series = [f"2.25.{900 + i}" for i in range(n)]
    records = [
        InstanceRecord(f"{uid}.{k}", "1.2.840.10008.5.1.4.1.1.77.1.6", "2.25.1", uid, "SM", "", "1.2.840.10008.1.2.4.50",
                       path, path.stat().st_size, "TEST", time.time())
        for uid in series for k, path in enumerate(paths)
    ]
    StoreSink(store).commit(records)
    return series


class Gate:
    """Wraps the slide pipeline: records which jobs entered, holds them at their first batch until opened."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.open = threading.Event()
        self.cond = threading.Condition()
        self.engines: dict[str, EngineCache] = {}
        self.results: dict[str, float] = {}

    def pipeline(self, job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> StudyResult:
        with self.cond:
            self.entered.append(job.id)
            self.engines[job.id] = engines
            self.cond.notify_all()
        first = [True]

        def held(done: int, total: int) -> None:
            if first[0]:
                first[0] = False
                assert self.open.wait(WAIT), "the test never opened the gate"
            progress(done, total)

        result = PathologyPipeline().run(job, store, engines, held)
        self.results[job.id] = result.findings[0].probability
        return result

    def wait_entered(self, n: int) -> list[str]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.entered) >= n, WAIT), f"only {self.entered} started"
            return list(self.entered)


def _report(result: StudyResult, job: Job) -> Sequence[Path]:
    return []


def _deliver(job: Job, files: Sequence[Path]) -> int:
    return 0


@pytest.fixture
def scheduler_for(site: Path) -> Iterator[Callable[..., tuple[Scheduler, StateStore, Gate]]]:
    made: list[Scheduler] = []

    def make(devices: list[str], **worker: Any) -> tuple[Scheduler, StateStore, Gate]:
        config = parse_config({"node": {"data_dir": str(site)},
                               "worker": {"devices": devices, "lease_seconds": 30, **worker}})
        store = StateStore.for_data_dir(site)
        gate = Gate()
        scheduler = worker_component(config, store, pipelines={"pathology": gate.pipeline}, report=_report,
                                     deliver=_deliver)
        scheduler.poll_seconds = 0.1
        for w in scheduler.workers:
            w.poll_seconds = 0.1
        made.append(scheduler)
        return scheduler, store, gate

    yield make
    for scheduler in made:
        scheduler.stop()


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.05)


def _states(queue: JobQueue, ids: Sequence[str]) -> list[str]:
    return [queue.get(i).state for i in ids]


def test_two_cpu_slots_run_two_slides_at_once_and_a_third_waits(
    scheduler_for: Callable[..., tuple[Scheduler, StateStore, Gate]], slide_files: list[Path]
) -> None:
    scheduler, store, gate = scheduler_for(["cpu", "cpu"])
    queue = scheduler.queue
    ids = [queue.enqueue("pathology", "2.25.1", [uid])[0] for uid in _spool(store, slide_files, 3)]
    scheduler.start()
    running = gate.wait_entered(2)
    assert sorted(_states(queue, ids)) == ["queued", "running", "running"], "two run, the third waits"
    assert set(running) == set(ids[:2]), "first in, first out at equal priority"
    board = {row["name"]: row for row in SlotBoard(store).read()}
    assert {board["slot0"]["job_id"], board["slot1"]["job_id"]} == set(ids[:2])
    assert board["slot0"]["device"] == board["slot1"]["device"] == "cpu"
    caches = [gate.engines[i] for i in ids[:2]]
    assert caches[0] is not caches[1], "each slot owns its engines"
    sessions = [c.get("pathology_tile").session for c in caches]
    assert sessions[0] is not sessions[1], "each slot has its own ONNX Runtime session"
    gate.open.set()
    _wait_for(lambda: _states(queue, ids) == ["succeeded"] * 3, "three slides to finish")
    assert len(gate.entered) == 3
    assert len(set(gate.results.values())) == 1, "the same slide scores the same on every slot"
    board = {row["name"]: row for row in SlotBoard(store).read()}
    assert board["slot0"]["jobs_run"] + board["slot1"]["jobs_run"] == 3
    assert all(0.0 < row["utilisation"] <= 1.0 for row in board.values())


def test_one_slot_runs_slides_in_priority_order(
    scheduler_for: Callable[..., tuple[Scheduler, StateStore, Gate]], slide_files: list[Path]
) -> None:
    scheduler, store, gate = scheduler_for(["cpu"])
    queue = scheduler.queue
    series = _spool(store, slide_files, 3)
    ids = [queue.enqueue("pathology", "2.25.1", [uid], priority=p)[0] for uid, p in zip(series, (5, 0, 3))]
    gate.open.set()
    scheduler.start()
    _wait_for(lambda: _states(queue, ids) == ["succeeded"] * 3, "three slides to finish")
    assert gate.entered == [ids[1], ids[2], ids[0]], "urgent first, then by priority"


def test_urgent_job_preempts_a_routine_slide_at_a_batch_boundary(
    scheduler_for: Callable[..., tuple[Scheduler, StateStore, Gate]], slide_files: list[Path]
) -> None:
    scheduler, store, gate = scheduler_for(["cpu"])
    queue = scheduler.queue
    routine_uid, urgent_uid, peer_uid = _spool(store, slide_files, 3)
    routine, _ = queue.enqueue("pathology", "2.25.1", [routine_uid], priority=5)
    scheduler.start()
    assert gate.wait_entered(1) == [routine]
    peer, _ = queue.enqueue("pathology", "2.25.1", [peer_uid], priority=5)
    urgent, _ = queue.enqueue("pathology", "2.25.1", [urgent_uid], priority=0)
    scheduler.notify()
    _wait_for(lambda: scheduler.workers[0].yielding, "the routine job to be asked to yield")
    gate.open.set()
    _wait_for(lambda: _states(queue, [routine, urgent, peer]) == ["succeeded"] * 3, "all three to finish")
    names = {routine: "routine", urgent: "urgent", peer: "peer"}
    assert [names[i] for i in gate.entered] == ["routine", "urgent", "routine", "peer"], "the urgent job first"
    job = queue.get(routine)
    assert job.preemptions == 1 and job.attempts == 1, "a yield is not a failed attempt"
    assert gate.results[routine] == gate.results[urgent], "same slide, same result after a preemption"
    board = SlotBoard(store).read()[0]
    assert (board["preemptions"], board["resumes"], board["jobs_run"]) == (1, 1, 4)


def test_a_job_that_waited_past_max_wait_is_not_preempted_again(
    scheduler_for: Callable[..., tuple[Scheduler, StateStore, Gate]], slide_files: list[Path]
) -> None:
    scheduler, store, gate = scheduler_for(["cpu"], max_wait_seconds=0.5)
    queue = scheduler.queue
    routine_uid, urgent_uid = _spool(store, slide_files, 2)
    routine, _ = queue.enqueue("pathology", "2.25.1", [routine_uid], priority=5)
    assert queue.lease("earlier-run") is not None
    assert queue.preempt(routine, "earlier-run", "yielded before")
    threading.Event().wait(0.6)  # it has now spent 0.6 s back in the queue after yielding (> max_wait 0.5 s)
    scheduler.start()
    assert gate.wait_entered(1) == [routine]
    assert scheduler.workers[0].current is not None and scheduler.workers[0].current.yielded_seconds > 0.5
    urgent, _ = queue.enqueue("pathology", "2.25.1", [urgent_uid], priority=0)
    assert scheduler.preempt_if_needed() == [], "past max_wait_seconds: runs to the end"
    assert not scheduler.workers[0].yielding
    gate.open.set()
    _wait_for(lambda: _states(queue, [routine, urgent]) == ["succeeded"] * 2, "both to finish")
    assert gate.entered == [routine, urgent]


def test_preemption_off_runs_to_the_end(
    scheduler_for: Callable[..., tuple[Scheduler, StateStore, Gate]], slide_files: list[Path]
) -> None:
    scheduler, store, gate = scheduler_for(["cpu"], preemption=False)
    queue = scheduler.queue
    routine_uid, urgent_uid = _spool(store, slide_files, 2)
    routine, _ = queue.enqueue("pathology", "2.25.1", [routine_uid], priority=5)
    scheduler.start()
    gate.wait_entered(1)
    urgent, _ = queue.enqueue("pathology", "2.25.1", [urgent_uid], priority=0)
    assert scheduler.preempt_if_needed() == []
    gate.open.set()
    _wait_for(lambda: _states(queue, [routine, urgent]) == ["succeeded"] * 2, "both to finish")
    assert gate.entered == [routine, urgent] and queue.get(routine).preemptions == 0


# ---------------------------------------------------------------------- placement


class _Manifest:
    def __init__(self, backend: str, memory: int = 0) -> None:
        self.backend_name = backend
        self.backend = {"name": backend, "device_memory_size": memory}


class _Source:
    def __init__(self, backends: dict[str, _Manifest]) -> None:
        self.backends = backends

    def active_manifest(self, task: str) -> _Manifest | None:
        return self.backends.get(task)


TASKS = {"pathology": ("pathology_tile",), "breast_mri": ("breast_mri",)}


def test_placement_by_backend_device_and_memory() -> None:
    cpu, gpu0, gpu1 = Device("slot0", "cpu"), Device("slot1", "cuda:0", memory_budget=1000), Device("slot2", "cuda:1")
    remote = Device("remote0", "remote")
    placement = Placement(_Source({"pathology_tile": _Manifest("tensorrt", 4000),
                                   "breast_mri": _Manifest("triton")}), TASKS, [cpu, gpu0, gpu1])
    assert placement.requirements()["pathology"] == Requirement(gpu=True, memory=4000)
    assert placement.excludes(cpu) == {"pathology", "breast_mri"}, "TensorRT needs CUDA; Triton runs remotely"
    assert placement.excludes(gpu0) == {"pathology", "breast_mri"}, "4000 bytes do not fit a 1000-byte budget"
    assert placement.excludes(gpu1) == {"breast_mri"}
    assert placement.excludes(remote) == {"pathology"}
    assert placement.needs_remote()


def test_a_job_no_slot_fits_goes_to_the_local_slots_to_fail_with_the_reason() -> None:
    cpu = Device("slot0", "cpu")
    placement = Placement(_Source({"pathology_tile": _Manifest("tensorrt")}), TASKS, [cpu])
    assert placement.excludes(cpu) == set()
    assert placement.excludes(Device("remote0", "remote")) == {"pathology", "breast_mri"}
    assert not placement.needs_remote()


def test_cpu_slots_share_the_cores_and_devices_are_checked() -> None:
    import os

    devices = plan_devices(["cpu", "cpu", "cuda:1"])
    assert [(d.slot, d.name) for d in devices] == [("slot0", "cpu"), ("slot1", "cpu"), ("slot2", "cuda:1")]
    assert devices[0].cpu_threads == max(1, (os.cpu_count() or 1) // 2)
    assert plan_devices(["cpu"], cpu_threads=3)[0].cpu_threads == 3
    with pytest.raises(ValueError, match="device 'gpu0' must be 'cpu' or 'cuda:N'"):
        plan_devices(["gpu0"])
    from appliance.errors import ConfigError

    with pytest.raises(ConfigError, match=r"worker.devices: .*device 'cuda0' must be 'cpu' or 'cuda:N'"):
        parse_config({"worker": {"devices": ["cuda0"]}})


class _RemoteEngine:
    remote = True

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.manifest = type("M", (), {"version": "1.0.0"})()

    def close(self) -> None:
        pass


class _RemoteSource(_Source):
    def __init__(self, capacity: int) -> None:
        super().__init__({"breast_mri": _Manifest("triton")})
        self.capacity = capacity

    def active_versions(self) -> dict[str, str]:
        return {"breast_mri": "1.0.0"}

    def load_active(self, task: str, cpu_threads: int = 0, device: str | None = None) -> _RemoteEngine:
        assert device == "cpu", "a remote lane loads no engine on a local device"
        return _RemoteEngine(self.capacity)


def test_remote_jobs_run_on_lanes_as_many_as_the_pool_takes(data_dir: Path) -> None:
    store = StateStore.for_data_dir(data_dir)
    queue = JobQueue(store, lease_seconds=30)
    gate = threading.Event()
    seen: list[str] = []
    cond = threading.Condition()

    def remote_job(job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> StudyResult:
        engines.get("breast_mri")
        with cond:
            seen.append(job.id)
            cond.notify_all()
        assert gate.wait(WAIT)
        raise RuntimeError("stop here")  # a transient failure is enough: the test counts concurrency

    source = _RemoteSource(capacity=3)
    scheduler = Scheduler(store, queue, {"breast_mri": remote_job}, _report, _deliver, source,
                          [Device("slot0", "cpu", 1)], TASKS, poll_seconds=0.05)
    ids = [queue.enqueue("breast_mri", "2.25.1", [f"2.25.{i}"])[0] for i in range(4)]
    scheduler.start()
    try:
        with cond:
            assert cond.wait_for(lambda: len(seen) >= 3, WAIT), f"only {seen} ran"
        assert scheduler.workers[0].current is None, "the local slot does not take remote jobs"
        assert len(scheduler.remote_lanes) == 3 and sorted(_states(queue, ids)).count("running") == 3
        names = [row["name"] for row in SlotBoard(store).read()]
        assert names == ["slot0", "remote0", "remote1", "remote2"]
    finally:
        gate.set()
        scheduler.stop()


def test_dashboard_and_metrics_show_each_slot(data_dir: Path) -> None:
    from appliance.web import WebServer, create_app

    store = StateStore.for_data_dir(data_dir)
    queue = JobQueue(store)
    clock = [time.time() - 40]  # the web app reads with the real clock: slot up 40 s ago
    board = SlotBoard(store, clock=lambda: clock[0])
    board.register([Device("slot0", "cuda:0"), Device("slot1", "cuda:1")])
    ident, _ = queue.enqueue("pathology", "2.25.1", ["2.25.2"], priority=5)
    job = queue.lease("w")
    assert job is not None and queue.preempt(ident, "w", "yielded") and queue.progress(ident, "w", 0, 0) is False
    job = queue.lease("w")
    assert job is not None and queue.progress(ident, "w", 300, 1000)
    clock[0] += 10
    board.job_started("slot0", job)
    clock[0] += 30
    config = parse_config({"node": {"data_dir": str(data_dir)}})
    server = WebServer(create_app(config, store), "127.0.0.1", 0)
    server.start()
    try:
        _check_pages(server.url, board, job, ident)
    finally:
        server.stop()


def _check_pages(url: str, board: SlotBoard, job: Job, ident: str) -> None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    page = httpx.get(url + "/", timeout=10).text
    assert 'id="slots"' in page and ident in page and "cuda:1" in page and "idle" in page
    assert re.search(r"<td>7[4-6] %</td>", page), "slot0 was busy for 30 of its 40 s"
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text)}
    samples = {(s.name, s.labels.get("slot")): s for f in families.values() for s in f.samples
               if s.name.startswith("appliance_slot")}
    assert samples[("appliance_slot_busy", "slot0")].value == 1.0
    assert samples[("appliance_slot_busy", "slot1")].value == 0.0
    assert samples[("appliance_slot_job", "slot0")].labels == {"slot": "slot0", "device": "cuda:0", "job": ident,
                                                                "pipeline": "pathology"}
    assert samples[("appliance_slot_utilisation_ratio", "slot0")].value == pytest.approx(0.75, abs=0.02)
    assert samples[("appliance_slot_resumes_total", "slot0")].value == 1.0, "it had yielded before"
    board.job_ended("slot0", job, "preempted")
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text)}
    samples = {(s.name, s.labels.get("slot")): s for f in families.values() for s in f.samples}
    assert samples[("appliance_slot_preemptions_total", "slot0")].value == 1.0
    assert samples[("appliance_slot_busy", "slot0")].value == 0.0
