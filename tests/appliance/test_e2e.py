"""End to end (issue 8, Acceptance): ``appliance serve`` as a process, a scanner over DICOM, Orthanc as the PACS.

1. kill -9 in the middle of a slide job: after a restart the job completes once
   and exactly one SR is in Orthanc (the restarted worker takes back the dead
   worker's lease at start instead of waiting for it to expire).
2. Two slides and one DCE-MRI study all complete, and the urgent MRI study
   (route priority 0), queued after both routine slides, runs first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.demo._scanner import (
    DemoStudy,
    send_study,
    write_dce_study,
    write_slide_study,
)
from tests.appliance import _e2e
from tests.appliance._demo_run import demo_run
from tests.peers import Orthanc

SM_ROUTE = {"pipeline": "pathology", "match": {"Modality": "SM"}, "stable_seconds": 1, "priority": 5}
MR_URGENT = {"pipeline": "breast_mri", "match": {"Modality": "MR"}, "stable_seconds": 1, "priority": 0}
#: slide sizes (level-0 pixels): big enough that a slide job runs for several seconds on 2 cores
KILL_SLIDE_PX = 2048
#: longer than the test waits for the SR: the restarted worker must reclaim the dead one's lease at start
KILL_LEASE_SECONDS = 300.0


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundles cached by the session's demo run (trained once per session)."""
    run = demo_run(tmp_path_factory)
    cache = run.data_dir / "demo-engines"
    if not (cache / "bundles.json").is_file():
        pytest.fail(f"the demo run made no engine cache (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return cache


@pytest.fixture
def appliance_dir(tmp_path: Path, engine_cache: Path) -> Path:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    _e2e.install_cached_engines(data_dir, engine_cache)
    return data_dir


@pytest.fixture
def serves() -> Iterator[list[_e2e.Serve]]:
    """Every serve process a test starts is gone after it."""
    started: list[_e2e.Serve] = []
    yield started
    for serve in started:
        serve.close()


def _start(serves: list[_e2e.Serve], config: Path, node_port: int) -> _e2e.Serve:
    serve = _e2e.Serve(config, node_port, config.parent / "serve.log")
    serves.append(serve)
    serve.start()
    return serve


def _job_of(data_dir: Path, study: DemoStudy) -> dict[str, Any] | None:
    found = [j for j in _e2e.jobs(data_dir) if j["study_uid"] == study.study_uid]
    assert len(found) <= 1, f"more than one job for one study: {found}"
    return found[0] if found else None


def _job_in(data_dir: Path, study: DemoStudy, state: str) -> dict[str, Any] | None:
    job = _job_of(data_dir, study)
    return job if job is not None and job["state"] == state else None


def _sr_of(orthanc: Orthanc, study: DemoStudy) -> list[dict[str, Any]]:
    return [dict(i) for i in orthanc.find_sr(study.study_uid)]


def _send(study: DemoStudy, node_port: int) -> None:
    send_study(study, "127.0.0.1", node_port, _e2e.NODE_AE)


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first test of a session may wait for the demo run to train engines
def test_kill_9_mid_slide_job_restarts_and_delivers_one_sr(
    tmp_path: Path, appliance_dir: Path, orthanc: Orthanc, serves: list[_e2e.Serve]
) -> None:
    config = tmp_path / "appliance.toml"
    node_port = _e2e.write_config(config, appliance_dir, orthanc, [SM_ROUTE], lease_seconds=KILL_LEASE_SECONDS)
    slide = write_slide_study(tmp_path / "scanner" / "slide", seed=21, size=KILL_SLIDE_PX)
    first = _start(serves, config, node_port)
    _send(slide, node_port)

    def running_with_progress() -> dict[str, Any] | None:
        job = _job_of(appliance_dir, slide)
        return job if job and job["state"] == "running" and job["progress_done"] > 0 else None

    job = _e2e.wait_for(running_with_progress, 90, "the slide job to run and report progress", first.tail)
    first.kill9()
    interrupted = _job_of(appliance_dir, slide)
    assert interrupted is not None and interrupted["state"] == "running", f"not killed mid-job: {interrupted}"
    assert not orthanc.find_sr(slide.study_uid), "no SR may exist before the job completed"

    second = _start(serves, config, node_port)
    srs = _e2e.wait_for(lambda: _sr_of(orthanc, slide), 120, "the SR of the slide in Orthanc", second.tail)
    assert "job(s) of a worker that died went back to the queue" in second.tail(20000), "reclaimed at start, not expired"
    done = _e2e.wait_for(lambda: _job_in(appliance_dir, slide, "succeeded"), 30, "the job to succeed", second.tail)
    rows = _e2e.wait_for(lambda: _e2e.all_delivered(appliance_dir), 60, "every delivery to be delivered", second.tail)

    assert len(srs) == 1, f"exactly one SR in Orthanc, got {len(srs)}"
    assert done["attempts"] == 2 and done["id"] == job["id"], done  # the interrupted attempt and the one that completed
    assert {r["job_id"] for r in rows} == {job["id"]}
    sop_uids = [r["sop_instance_uid"] for r in rows]
    assert len(sop_uids) == len(set(sop_uids)), f"a result was queued twice: {sop_uids}"
    with orthanc.rest() as client:
        study_ids = client.post("/tools/lookup", content=slide.study_uid).raise_for_status().json()
        assert len(study_ids) == 1, study_ids
        stored = client.get(f"/studies/{study_ids[0]['ID']}/instances").raise_for_status().json()
    stored_uids = [str(i["MainDicomTags"]["SOPInstanceUID"]) for i in stored]
    assert sorted(stored_uids) == sorted(sop_uids), "every delivered object once in Orthanc, nothing else"
    assert srs[0]["MainDicomTags"]["SOPInstanceUID"] in sop_uids
    status = _e2e.status_json(config)
    assert status["jobs"]["succeeded"] == 1 and status["jobs"]["running"] == 0 and status["jobs"]["queued"] == 0, status
    assert status["deliveries"]["delivered"] == len(rows), status
    assert not _e2e.temporaries(appliance_dir), "temporary files left in the spool or outbox"

    assert second.terminate(timeout=30) == 0, second.tail()
    assert "Traceback" not in second.tail(20000).split("received SIGTERM")[-1], second.tail()


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first test of a session may wait for the demo run to train engines
def test_two_slides_and_an_urgent_mri_all_complete_and_mri_overtakes(
    tmp_path: Path, appliance_dir: Path, orthanc: Orthanc, serves: list[_e2e.Serve]
) -> None:
    """The node queues routine slides A, B, then the urgent MRI study while no worker runs (as during a
    restart or a long job); ``appliance serve`` then runs the MRI job first and completes all three.

    Receiving with the service's own node and assembly components but no worker makes the queue
    order deterministic; slide jobs take well under a second on the demo engines, so a busy worker
    could not be relied on to keep them queued.
    """
    from appliance.assembly import assembly_component
    from appliance.config import load_config
    from appliance.ingest import node_component
    from appliance.service import Service

    config = tmp_path / "appliance.toml"
    node_port = _e2e.write_config(config, appliance_dir, orthanc, [SM_ROUTE, MR_URGENT])
    scans = tmp_path / "scanner"
    slide_a = write_slide_study(scans / "slide-a", seed=31, size=KILL_SLIDE_PX)
    slide_b = write_slide_study(scans / "slide-b", seed=32, size=KILL_SLIDE_PX)
    mri = write_dce_study(scans / "dce", seed=11)
    studies = (slide_a, slide_b, mri)

    receiver = Service(load_config(config), factories=[node_component, assembly_component])
    receiver.start()
    try:
        for study in studies:  # in this order, each queued before the next is sent
            _send(study, node_port)
            _e2e.wait_for(lambda: _job_in(appliance_dir, study, "queued"), 60,  # noqa: B023 - called at once
                          f"the {study.pipeline} job to be queued")
    finally:
        receiver.stop()

    serve = _start(serves, config, node_port)
    jobs = {}
    for study in studies:
        _e2e.wait_for(lambda: _sr_of(orthanc, study), 180, f"the {study.pipeline} SR", serve.tail)  # noqa: B023
        jobs[study.study_uid] = _e2e.wait_for(lambda: _job_in(appliance_dir, study, "succeeded"), 30,  # noqa: B023
                                              f"the {study.pipeline} job to succeed", serve.tail)
    _e2e.wait_for(lambda: _e2e.all_delivered(appliance_dir), 60, "every delivery to be delivered", serve.tail)
    for study in studies:
        assert len(orthanc.find_sr(study.study_uid)) == 1, study.pipeline
    a, b, m = jobs[slide_a.study_uid], jobs[slide_b.study_uid], jobs[mri.study_uid]
    assert [a["pipeline"], b["pipeline"], m["pipeline"]] == ["pathology", "pathology", "breast_mri"]
    assert (a["priority"], b["priority"], m["priority"]) == (5, 5, 0)
    assert a["created_at"] < b["created_at"] < m["created_at"], "the routine slides were queued first"
    assert m["started_at"] < a["started_at"] < b["started_at"], "urgent first, then first in, first out"
    assert m["finished_at"] <= a["started_at"], "one worker: the urgent job ran to completion first"
    assert all(j["attempts"] == 1 for j in (a, b, m)), jobs

    assert serve.terminate(timeout=30) == 0, serve.tail()
