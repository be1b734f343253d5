"""Study assembly on the real store: stable series, complete studies, required series, force-complete."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from appliance.assembly import Assembler, AssemblyComponent, assembly_component, missing_required
from appliance.config import parse_config
from appliance.jobs import JobQueue, job_id_for
from appliance.state import StateStore
from tests.appliance._spooled import Clock, spool_instance

T0 = 1_000_000.0


@pytest.fixture
def store(data_dir: Path) -> StateStore:
    return StateStore.for_data_dir(data_dir)


def _assembler(store: StateStore, clock: Clock, routes: list[dict[str, object]]) -> Assembler:
    config = parse_config({"routes": routes})
    return Assembler(config.routes, store, JobQueue(store, clock=clock), clock=clock)


def test_stable_seconds_completes_series(store: StateStore, data_dir: Path) -> None:
    clock = Clock(T0)
    assembler = _assembler(store, clock, [{"pipeline": "pathology", "match": {"Modality": "SM"}, "stable_seconds": 30}])
    study, slide = generate_uid(), generate_uid()
    spool_instance(store, data_dir, study, slide, modality="SM", received_at=T0)
    clock.advance(20)
    spool_instance(store, data_dir, study, slide, modality="SM", received_at=clock.now)  # still arriving
    clock.advance(29)
    assert assembler.tick() == []
    clock.advance(1)
    assert assembler.tick() == [job_id_for("pathology", slide)]
    assert assembler.tick() == [], "never two jobs for one series"
    job = store.query("select * from jobs")[0]
    assert (job["pipeline"], job["study_uid"], job["priority"], job["state"]) == ("pathology", study, 5, "queued")
    assert store.query("select state from series")[0]["state"] == "assembled"


def test_one_job_per_series_for_pathology(store: StateStore, data_dir: Path) -> None:
    clock = Clock(T0)
    assembler = _assembler(store, clock, [{"pipeline": "pathology", "match": {"Modality": "SM"}, "stable_seconds": 1}])
    study = generate_uid()
    slides = [generate_uid(), generate_uid()]
    for slide in slides:
        spool_instance(store, data_dir, study, slide, modality="SM", received_at=T0)
    clock.advance(1)
    assert sorted(assembler.tick()) == sorted(job_id_for("pathology", s) for s in slides)


def test_study_waits_for_all_series_and_required(store: StateStore, data_dir: Path) -> None:
    clock = Clock(T0)
    route = {
        "pipeline": "breast_mri",
        "match": {"Modality": "MR"},
        "stable_seconds": 10,
        "required_series": ["re:(?i)dce", "T2"],
        "priority": 0,
    }
    assembler = _assembler(store, clock, [route])
    study, dce, t2 = generate_uid(), generate_uid(), generate_uid()
    spool_instance(store, data_dir, study, dce, description="Ax DCE", received_at=T0)
    clock.advance(15)
    assert assembler.tick() == [], "the T2 series is required and missing"
    spool_instance(store, data_dir, study, t2, description="T2", received_at=clock.now)
    clock.advance(5)
    assert assembler.tick() == [], "the T2 series is not quiet yet"
    clock.advance(5)
    assert assembler.tick() == [job_id_for("breast_mri", study)]
    job = store.query("select * from jobs")[0]
    assert job["priority"] == 0 and job["study_uid"] == study
    assert sorted(json.loads(job["series_uids"])) == sorted([dce, t2])
    # a late series of an assembled study makes no second job
    late = generate_uid()
    spool_instance(store, data_dir, study, late, description="sub", received_at=clock.now)
    clock.advance(20)
    assert assembler.tick() == []
    assert store.query("select count(*) as n from jobs")[0]["n"] == 1
    assert store.query("select state from series where series_uid = ?", (late,))[0]["state"] == "assembled"


def test_force_complete(store: StateStore, data_dir: Path) -> None:
    clock = Clock(T0)
    route = {
        "pipeline": "breast_mri",
        "match": {"Modality": "MR"},
        "stable_seconds": 5,
        "required_series": ["T2"],
        "force_complete_seconds": 60,
    }
    assembler = _assembler(store, clock, [route])
    study = generate_uid()
    spool_instance(store, data_dir, study, generate_uid(), description="DCE", received_at=T0)
    clock.advance(59)
    assert assembler.tick() == []
    clock.advance(1)
    assert assembler.tick() == [job_id_for("breast_mri", study)]


@pytest.mark.parametrize(
    ("required", "descriptions", "missing"),
    [(["T2", "re:(?i)dce"], ["T2", "ax dce"], []), (["T2", "re:(?i)dce"], ["T2 fs"], ["T2", "re:(?i)dce"])],
)
def test_missing_required(required: list[str], descriptions: list[str], missing: list[str]) -> None:
    assert missing_required(required, descriptions) == missing


def test_component_creates_jobs_in_background(store: StateStore, data_dir: Path) -> None:
    config = parse_config({"routes": [{"pipeline": "pathology", "match": {"Modality": "SM"}, "stable_seconds": 0}]})
    seen = threading.Event()
    component = assembly_component(config, store, on_job=lambda _job: seen.set())
    assert isinstance(component, AssemblyComponent) and component.name == "assembly"
    component.start()
    try:
        spool_instance(store, data_dir, generate_uid(), generate_uid(), modality="SM")
        assert seen.wait(10), "no job was created"
    finally:
        component.stop()
        component.stop()  # idempotent
    assert store.query("select state from jobs")[0]["state"] == "queued"
