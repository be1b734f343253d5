"""The "AI result not available" SR: built from the study, judged by dciodvfy and dsrdump, sent by the worker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from appliance.config import parse_config
from appliance.errors import ReportError
from appliance.inference import worker_component
from appliance.jobs import Job, JobQueue
from appliance.mri.pipeline import job_instance_paths, prepare_inputs
from appliance.reports.sr import DeviceInfo
from appliance.reports.unavailable import NOT_AVAILABLE, build_unavailable_sr, write_unavailable
from appliance.routing import route_open_series
from appliance.state import StateStore
from appliance.worker import EngineCache, ProgressFn
from tests.appliance._spooled import PATIENT_ID, PATIENT_NAME, spool_instance
from tests.mri.test_protocols import TIMED_CARD
from tests.mri.tiny_engine import mri_card
from tests.peers import DSRDUMP, dciodvfy, require_tool

DEVICE = DeviceInfo.from_serial("SN-TEST-NA", name="APPLIANCE")
REASON = "the study does not cover the model's time window: no phase at or after 210 s (tolerance 30 s)"


def _spooled_study(store: StateStore, data_dir: Path, series: int = 2) -> tuple[str, list[str]]:
    study = generate_uid()
    uids = [generate_uid() for _ in range(series)]
    for number, uid in enumerate(uids, start=1):
        spool_instance(store, data_dir, study, uid, description=f"dyn {number}", SeriesNumber=number)
    return study, uids


def test_not_available_sr_passes_dciodvfy_and_dsrdump(tmp_path: Path) -> None:
    require_tool(DSRDUMP)
    store = StateStore.for_data_dir(tmp_path)
    study, series = _spooled_study(store, tmp_path)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in job_instance_paths(store, series)]
    path = write_unavailable("J0123456789ab", "breast_mri", REASON, DEVICE, headers, tmp_path / "outbox")
    errors, output = dciodvfy(path)
    assert errors == [], output
    dump = subprocess.run([str(DSRDUMP), "+Pl", str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "UNVERIFIED" in dump.stdout and "Imaging Measurement Report" in dump.stdout
    assert f"{NOT_AVAILABLE}: the breast mri analysis could not be run" in dump.stdout
    assert "no phase at or after 210 s" in dump.stdout
    sr = pydicom.dcmread(path)
    assert sr.StudyInstanceUID == study and sr.SeriesInstanceUID not in series
    assert (str(sr.PatientName), sr.PatientID) == (PATIENT_NAME, PATIENT_ID)  # from the study, for PACS filing
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.SeriesDescription == f"{NOT_AVAILABLE} (unverified)"
    again = write_unavailable("J0123456789ab", "breast_mri", REASON, DEVICE, headers, tmp_path / "outbox")
    assert again == path, "a re-run writes the same instance"


def test_headers_of_two_studies_are_refused(tmp_path: Path) -> None:
    store = StateStore.for_data_dir(tmp_path)
    _, first = _spooled_study(store, tmp_path, 1)
    _, second = _spooled_study(store, tmp_path, 1)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in job_instance_paths(store, first + second)]
    with pytest.raises(ReportError, match=r"belong to 2 studies, not one"):
        build_unavailable_sr("J1", "breast_mri", REASON, DEVICE, headers)


def _failing_pipeline(job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> None:
    """The real breast-MRI preparation on a one-image study: refused for a reason in the study."""
    prepare_inputs(job_instance_paths(store, job.series_uids), mri_card(TIMED_CARD))


class _NoEngines:
    """An engine source with nothing installed: the failing pipeline never asks for an engine."""

    def active_versions(self) -> dict[str, str]:
        return {}

    def load_active(self, task: str, cpu_threads: int = 0) -> None:
        raise AssertionError(f"engine {task} requested")


@pytest.mark.parametrize("failure_report", [True, False])
def test_worker_sends_the_not_available_sr_for_a_study_failure(tmp_path: Path, failure_report: bool) -> None:
    config = parse_config({
        "node": {"data_dir": str(tmp_path)},
        "destinations": [{"name": "pacs", "ae_title": "ORTHANC", "port": 4242}],
        "routes": [{"pipeline": "breast_mri", "match": {"Modality": "MR"}, "failure_report": failure_report}],
    })
    store = StateStore.for_data_dir(tmp_path)
    study, series = _spooled_study(store, tmp_path, 1)
    route_open_series(store, config.routes)
    queue = JobQueue(store, 60, 3)
    job_id, _ = queue.enqueue("breast_mri", study, series, 5)
    scheduler = worker_component(config, store, pipelines={"breast_mri": _failing_pipeline},  # type: ignore[dict-item]
                                 source=_NoEngines())
    assert scheduler.workers[0].run_once() is not None
    job = store.query("select state, reason from jobs where id = ?", (job_id,))[0]
    assert job["state"] == "failed" and "1 phase found" in job["reason"]
    rows = store.query("select destination, path, state from deliveries where job_id = ?", (job_id,))
    if not failure_report:
        assert rows == []
        return
    assert [(r["destination"], r["state"]) for r in rows] == [("pacs", "pending")]
    sr = pydicom.dcmread(rows[0]["path"])
    assert sr.StudyInstanceUID == study and sr.VerificationFlag == "UNVERIFIED"
    assert "1 phase found" in str(sr.ContentSequence[-1].ContentSequence[0].TextValue)
    errors, output = dciodvfy(Path(rows[0]["path"]))
    assert errors == [], output


def test_dashboard_shows_the_reason_without_uids(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from appliance.web import create_app

    config = parse_config({"node": {"data_dir": str(tmp_path), "min_free_bytes": 1}, "web": {"port": 0}})
    store = StateStore.for_data_dir(tmp_path)
    study, series = _spooled_study(store, tmp_path, 1)
    queue = JobQueue(store)
    job_id, _ = queue.enqueue("breast_mri", study, series)
    queue.lease("w")
    reason = f"series {series[0]} (dyn 1): {REASON}"
    queue.fail(job_id, "w", reason, transient=False)
    page = TestClient(create_app(config, store)).get("/")
    assert page.status_code == 200
    assert f"series &lt;UID&gt; (dyn 1): {REASON}".replace("'", "&#39;") in page.text
    assert series[0] not in page.text and study not in page.text and PATIENT_NAME not in page.text
