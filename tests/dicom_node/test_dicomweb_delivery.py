"""Delivery to DICOMweb destinations by STOW-RS, against a real Orthanc with its DICOMweb plugin.

The appliance's own SRs (built by the report code) go through the outbox and the
delivery loop exactly as in service: found with Orthanc's QIDO-RS, byte-identical
when read back; a service that is down receives every SR once it is back; a real
409 (Orthanc refusing an instance of another study than the URL's) ends dead
with its reason, a real 401 is retried until the maximum age (as a rejected
association); a DIMSE and a DICOMweb destination never wait on each other.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from appliance.config import parse_config
from appliance.findings import Finding, StudyResult
from appliance.jobs import JobQueue
from appliance.outbox import Outbox, delivery_component, enqueue, outbox_dir, web_destination_from
from appliance.reports import DeviceInfo, build_reports
from appliance.state import StateStore
from dicom_node.delivery import DeliverySender, FileSender, RetryPolicy
from dicom_node.scu import StorageSCU
from dicom_node.stow_client import StowClient, WebDestination
from tests.dicom_node._delivery_helpers import Recorder, silent_listener
from tests.peers import Orthanc, free_port, running_orthanc, write_mr_instances
from tests.reports._sources import engine, source_of

FAST = RetryPolicy(initial=0.2, max_backoff=0.5, max_age=60.0)
USER, PASSWORD = "appliance", "s3cret-pw"
DEVICE = DeviceInfo.from_serial("SN-TEST-WEB")


@pytest.fixture(scope="module")
def web_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc with DICOMweb and HTTP basic authentication, for the tests that never stop it."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc-web"), dicomweb=True, users={USER: PASSWORD}) as orthanc:
        yield orthanc


@pytest.fixture
def store(data_dir: Path) -> Iterator[StateStore]:
    state = StateStore.for_data_dir(data_dir)
    yield state
    state.close()


def _web(orthanc: Orthanc, name: str = "web", password: str = PASSWORD) -> WebDestination:
    return WebDestination(name, orthanc.dicomweb_url, basic=(USER, password))


def _sender(store: StateStore, destinations: list[WebDestination], recorder: Recorder) -> DeliverySender:
    web: FileSender = StowClient(timeout=10)
    return DeliverySender(
        Outbox(store), {d.name: d for d in destinations}, StorageSCU("APPLIANCE", timeout=10), FAST,
        poll_interval=0.05, listener=recorder, rng=random.Random(7), senders={"dicomweb": web},
    )


def _queue_sr(store: StateStore, data_dir: Path, destinations: list[str], job_study: str | None = None) -> Path:
    """Build one SR of a new MR study with the report code, queue it under its job; return its path."""
    (source,) = write_mr_instances(data_dir / "work" / generate_uid(), 1, study_each=True)  # a new study
    image = source_of(source)
    finding = Finding("breast_mri", 0.77, 0.42, engine("breast_mri"), (image,), kinetic_curve="washout")
    result = StudyResult(f"job-web-{image.study_uid}", image.study_uid, (finding,))
    paths = build_reports(result, outbox_dir(data_dir), DEVICE)
    (sr,) = [p for p in paths if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR"]
    job_id, _ = JobQueue(store).enqueue("breast_mri", job_study or result.study_uid, [], job_id=generate_uid())
    enqueue(store, job_id, sr, pydicom.dcmread(sr, stop_before_pixels=True).SOPInstanceUID, destinations)
    return sr


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _qido(orthanc: Orthanc, study_uid: str) -> list[str]:
    """SOP Instance UIDs of the study, by QIDO-RS ``/dicom-web/studies/{study}/instances``."""
    with orthanc.rest() as client:
        found = client.get(f"/dicom-web/studies/{study_uid}/instances").raise_for_status()
    return [item["00080018"]["Value"][0] for item in (found.json() if found.content else [])]


def _stored_bytes(orthanc: Orthanc, sop_instance_uid: str) -> bytes:
    with orthanc.rest() as client:
        (match,) = client.post("/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}).json()
        return client.get(f"/instances/{match}/file").raise_for_status().content


def _rows(store: StateStore) -> dict[str, dict[str, object]]:
    return {r["sop_instance_uid"]: r for r in store.query("select * from deliveries")}


def test_an_sr_is_stored_by_stow_rs_found_by_qido_and_byte_identical(
    web_pacs: Orthanc, store: StateStore, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sr = _queue_sr(store, data_dir, ["web"])
    study, series, sop = _uids(sr)
    recorder = Recorder()
    caplog.set_level(logging.INFO)  # the service's level: dicomweb-client's INFO lines name the study
    outcomes = _sender(store, [_web(web_pacs)], recorder).run_once("web")
    assert [o.state for o in outcomes] == ["delivered"], outcomes
    assert not {study, series, sop} & {word.strip('"') for word in caplog.text.split()}, caplog.text
    assert _qido(web_pacs, study) == [sop]
    assert _stored_bytes(web_pacs, sop) == sr.read_bytes()
    assert _rows(store)[sop]["state"] == "delivered"

    # sent again (a crash before the row was marked): same SOP Instance UID, one copy in the archive
    with store.atomic() as db:
        db.execute("update deliveries set state = 'pending', next_attempt_at = 0")
    assert [o.state for o in _sender(store, [_web(web_pacs)], recorder).run_once("web")] == ["delivered"]
    assert _qido(web_pacs, study) == [sop]


def test_a_result_of_another_study_than_its_job_gets_a_real_409_and_is_dead_with_the_reason(
    web_pacs: Orthanc, store: StateStore, data_dir: Path
) -> None:
    sr = _queue_sr(store, data_dir, ["web"], job_study=generate_uid())
    outcomes = _sender(store, [_web(web_pacs)], Recorder()).run_once("web")
    assert [o.state for o in outcomes] == ["dead"], outcomes
    row = _rows(store)[_uids(sr)[2]]
    assert row["state"] == "dead" and row["attempts"] == 1
    assert "HTTP 409 Conflict" in str(row["last_error"]) and "Failure Reason 0x0110" in str(row["last_error"])
    assert _qido(web_pacs, _uids(sr)[0]) == []


def test_wrong_credentials_get_a_real_401_and_are_retried_without_the_password(
    web_pacs: Orthanc, store: StateStore, data_dir: Path
) -> None:
    sr = _queue_sr(store, data_dir, ["web"])
    outcomes = _sender(store, [_web(web_pacs, password="wrong-pw")], Recorder()).run_once("web")
    assert [o.state for o in outcomes] == ["retry"]  # as a rejected association: until the maximum age
    assert _rows(store)[_uids(sr)[2]]["state"] == "pending"
    reason = str(_rows(store)[_uids(sr)[2]]["last_error"])
    assert "HTTP 401" in reason and "wrong-pw" not in reason and PASSWORD not in reason


def test_a_service_that_is_down_receives_every_sr_once_it_is_back(
    store: StateStore, data_dir: Path, tmp_path: Path
) -> None:
    archive = Orthanc(aet="ARCHIVE", dicom_port=free_port(), http_port=free_port(), storage=tmp_path / "archive",
                      dicomweb=True)
    srs = [_queue_sr(store, data_dir, ["archive"]) for _ in range(3)]
    recorder = Recorder()
    sender = _sender(store, [WebDestination("archive", archive.dicomweb_url)], recorder)
    sender.start()
    try:
        # down: every SR fails and is retried (connection refused), none dies
        recorder.wait_for(lambda outs: sum(o.state == "retry" for o in outs) >= 2 * len(srs), timeout=30)
        assert all(o.state == "retry" and "connection refused" in o.reason for o in recorder.outcomes)
        archive.start()
        recorder.wait_for(lambda outs: sum(o.state == "delivered" for o in outs) == len(srs), timeout=30)
    finally:
        sender.stop()
        archive.stop()
    rows = _rows(store)
    assert {str(rows[_uids(p)[2]]["state"]) for p in srs} == {"delivered"}
    assert all(int(str(rows[_uids(p)[2]]["attempts"])) >= 3 for p in srs)
    archive.start()
    try:
        for path in srs:
            assert _qido(archive, _uids(path)[0]) == [_uids(path)[2]]
    finally:
        archive.stop()


def test_hung_or_down_dimse_and_dicomweb_destinations_do_not_delay_the_others(
    web_pacs: Orthanc, store: StateStore, data_dir: Path
) -> None:
    with silent_listener() as hung:
        config = parse_config({
            "node": {"data_dir": str(data_dir)},
            "destinations": [
                {"name": "pacs", "ae_title": "HUNG", "host": "127.0.0.1", "port": hung},
                {"name": "web", "kind": "dicomweb", "url": web_pacs.dicomweb_url + "/", "basic": f"{USER}:{PASSWORD}"},
                {"name": "down", "kind": "dicomweb", "url": f"http://127.0.0.1:{free_port()}/dicom-web"},
                {"name": "hungweb", "kind": "dicomweb", "url": f"http://127.0.0.1:{hung}/dicom-web"},
                {"name": "dimse", "ae_title": web_pacs.aet, "host": "127.0.0.1", "port": web_pacs.dicom_port},
            ],
            "delivery": {"initial_backoff_seconds": 0.2, "max_backoff_seconds": 0.5, "timeout_seconds": 30},
        })
        srs = [_queue_sr(store, data_dir, ["pacs", "web", "down", "dimse", "hungweb"]) for _ in range(2)]
        sender = delivery_component(config, store)
        assert sender is not None
        done = threading.Event()

        def delivered() -> bool:
            rows = list(store.query("select destination, state, last_error from deliveries"))
            sent = all(r["state"] == "delivered" for r in rows if r["destination"] in ("web", "dimse"))
            return sent and all(r["last_error"] for r in rows if r["destination"] == "down")

        sender.start()
        try:
            for _ in range(300):  # both reachable destinations finish while the hung PACS holds its association
                if delivered():
                    done.set()
                    break
                done.wait(0.1)
        finally:
            sender.stop(timeout=2)
    assert done.is_set(), list(store.query("select destination, state, last_error from deliveries"))
    rows = list(store.query("select destination, state, last_error from deliveries"))
    assert {r["state"] for r in rows if r["destination"] in ("pacs", "hungweb")} == {"pending"}
    assert {r["state"] for r in rows if r["destination"] == "down"} == {"pending"}
    assert all("connection refused" in r["last_error"] for r in rows if r["destination"] == "down")
    for path in srs:
        assert _qido(web_pacs, _uids(path)[0]) == [_uids(path)[2]]
    assert web_destination_from(config.destination("web")).url == web_pacs.dicomweb_url  # trailing slash dropped
