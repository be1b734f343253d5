"""The dashboard served by the real web component over HTTP: no PHI, token-guarded changes, metrics."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from appliance.config import Config, parse_config
from appliance.jobs import JobQueue
from appliance.state import StateStore
from appliance.web import WebServer, create_app
from tests.appliance._spooled import ACCESSION, PATIENT_ID, PATIENT_NAME, spool_instance
from tests.engines._helpers import keypair, make_bundle

TOKEN = "s3cret-token"
PAGES = ("/", "/engines", "/metrics", "/healthz", "/api/status")


def _config(data_dir: Path, **web: Any) -> Config:
    return parse_config(
        {
            "node": {"data_dir": str(data_dir), "min_free_bytes": 1},
            "destinations": [{"name": "pacs", "ae_title": "ORTHANC", "port": 4242}],
            "web": {"port": 0, **web},
            "worker": {"max_queue": 2},
        }
    )


@pytest.fixture
def site(data_dir: Path) -> Iterator[dict[str, Any]]:
    """A store with instances carrying a patient name, jobs in every state, deliveries; a running server."""
    config = _config(data_dir, token=TOKEN)
    store = StateStore.for_data_dir(data_dir)
    study, series = generate_uid(), generate_uid()
    for _ in range(3):
        spool_instance(store, data_dir, study, series, modality="SM", description="slide")
    queue = JobQueue(store)
    done, _ = queue.enqueue("pathology", study, [series])
    queue.lease("w")
    queue.progress(done, "w", 40, 40)
    queue.succeed(done, "w", {"findings": [{"probability": 0.8125, "positive": True, "engine": "pathology_slide@1.0.0",
                                            "demo": True}], "objects": ["a.dcm"], "tiles_scored": 40,
                              "seconds": {"pipeline": 2.0}})
    running, _ = queue.enqueue("breast_mri", study, [series])
    queue.lease("w")
    queue.progress(running, "w", 7, 20)
    failed, _ = queue.enqueue("pathology", study, [generate_uid()])
    queue.lease("w")
    queue.fail(failed, "w", "slide has no tissue")
    queue.enqueue("pathology", study, [generate_uid()])
    queue.enqueue("pathology", study, [generate_uid()], priority=0)
    now = time.time()
    with store.atomic() as db:
        db["deliveries"].insert_all(
            [
                {"job_id": done, "destination": "pacs", "path": "x", "sop_instance_uid": "1.2.3.1", "state": "delivered",
                 "attempts": 1, "next_attempt_at": 0, "created_at": now - 0.3, "delivered_at": now, "last_error": ""},
                {"job_id": done, "destination": "pacs", "path": "y", "sop_instance_uid": "1.2.3.2", "state": "pending",
                 "attempts": 2, "next_attempt_at": now + 5, "created_at": now, "delivered_at": 0,
                 "last_error": "association rejected by ORTHANC"},
            ]
        )
    server = WebServer(create_app(config, store), "127.0.0.1", 0)
    server.start()
    try:
        yield {"config": config, "store": store, "server": server, "study": study, "series": series,
               "jobs": {"done": done, "running": running, "failed": failed}, "data_dir": data_dir}
    finally:
        server.stop()
        server.stop()


def _get(site: dict[str, Any], path: str) -> httpx.Response:
    return httpx.get(site["server"].url + path, timeout=10)


def test_pages_show_state_without_phi(site: dict[str, Any]) -> None:
    texts = {}
    for page in PAGES:
        response = _get(site, page)
        assert response.status_code == 200, page
        texts[page] = response.text
    forbidden = [PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID, ACCESSION, site["study"], site["series"]]
    for page, text in texts.items():
        for secret in forbidden:
            assert secret not in text, f"{secret!r} shown on {page}"
    home = texts["/"]
    jobs = site["jobs"]
    assert jobs["running"] in home and 'value="7" max="20"' in home
    assert jobs["done"] in home and "0.812" in home and "positive" in home
    assert "slide has no tissue" in home
    assert "association rejected by ORTHANC" in home and "ORTHANC@127.0.0.1:4242" in home
    assert "Queue depth 2 of 2" in home and "the job queue is at its limit" in home
    assert json.loads(texts["/api/status"])["jobs"] == {"queued": 2, "running": 1, "succeeded": 1, "failed": 1}


def test_metrics_parse(site: dict[str, Any]) -> None:
    response = _get(site, "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("appliance_instances_received_total", ())] == 3
    assert samples[("appliance_jobs", (("state", "queued"),))] == 2
    assert samples[("appliance_jobs", (("state", "failed"),))] == 1
    assert samples[("appliance_job_duration_seconds_count", (("pipeline", "pathology"),))] == 1
    assert samples[("appliance_tiles_per_second", ())] == 20.0
    assert samples[("appliance_delivery_latency_seconds_bucket", (("destination", "pacs"), ("le", "0.5")))] == 1
    assert samples[("appliance_delivery_latency_seconds_bucket", (("destination", "pacs"), ("le", "0.1")))] == 0
    assert samples[("appliance_deliveries", (("destination", "pacs"), ("state", "dead")))] == 0
    assert samples[("appliance_failures_total", (("kind", "job"),))] == 1
    assert samples[("appliance_backpressure", ())] == 1
    assert PATIENT_NAME not in response.text


@pytest.mark.parametrize(
    ("headers", "form", "status"),
    [
        ({}, "task=test_task&version=1.0.0", 401),
        ({"Authorization": "Bearer wrong"}, "task=test_task&version=1.0.0", 401),
        ({}, "task=test_task&version=1.0.0&token=wrong", 401),
        ({"Authorization": f"Bearer {TOKEN}"}, "task=test_task&version=9.9.9", 400),  # authorised; no such version
        ({}, f"task=test_task&version=9.9.9&token={TOKEN}", 400),
    ],
)
def test_changes_need_the_token(site: dict[str, Any], headers: dict[str, str], form: str, status: int) -> None:
    response = httpx.post(
        site["server"].url + "/engines/activate", content=form, timeout=10,
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    assert response.status_code == status, response.text
    if status == 401:
        assert "valid token is required" in response.text


def test_install_activate_rollback_through_the_web(site: dict[str, Any], tmp_path: Path) -> None:
    pem = keypair(site["config"].trusted_keys_dir, "vendor")
    first = make_bundle(tmp_path / "b1", pem, version="1.0.0")
    second = make_bundle(tmp_path / "b2", pem, version="1.1.0")
    url = site["server"].url
    auth = {"Authorization": f"Bearer {TOKEN}"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = httpx.post(url + "/engines/install", content=f"bundle_path={first}&token={TOKEN}", headers=form, timeout=60)
    assert r.status_code == 303 and "installed" in r.headers["location"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(second, arcname="bundle")
    r = httpx.post(url + "/engines/install", content=buffer.getvalue(), timeout=60,
                   headers={**auth, "Content-Type": "application/x-tar"})
    assert r.status_code == 200 and r.json()["version"] == "1.1.0", r.text
    for version in ("1.0.0", "1.1.0"):
        r = httpx.post(url + "/engines/activate", content=f"task=test_task&version={version}", timeout=30,
                       headers={**auth, **form})
        assert r.status_code == 200, r.text
    assert "test_task" in _get(site, "/").text and "1.1.0" in _get(site, "/").text
    r = httpx.post(url + "/engines/rollback", content="task=test_task", headers={**auth, **form}, timeout=30)
    assert r.status_code == 200 and r.json()["version"] == "1.0.0"
    assert json.loads(_get(site, "/api/status").text)["engines"] == {"test_task": "1.0.0"}
    audit = site["store"].query("select actor, action from audit")
    assert any(row["actor"].startswith("web:") for row in audit)


def test_changes_refused_without_configured_token(data_dir: Path) -> None:
    config = _config(data_dir)
    server = WebServer(create_app(config, StateStore.for_data_dir(data_dir)), "127.0.0.1", 0)
    server.start()
    try:
        r = httpx.post(server.url + "/engines/rollback", content="task=x&token=", timeout=10,
                       headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer anything"})
        assert r.status_code == 403 and "no [web] token" in r.text
        assert "Changes are disabled" in httpx.get(server.url + "/engines", timeout=10).text
    finally:
        server.stop()


def test_healthz_fails_when_disk_is_below_limit(data_dir: Path) -> None:
    config = parse_config({"node": {"data_dir": str(data_dir), "min_free_bytes": 2**62}})
    server = WebServer(create_app(config, StateStore.for_data_dir(data_dir), {"node": lambda: True}), "127.0.0.1", 0)
    server.start()
    try:
        r = httpx.get(server.url + "/healthz", timeout=10)
        assert r.status_code == 503 and r.json()["checks"] == {"state_store": True, "disk": False, "node": True}
        assert "free disk is below the limit" in httpx.get(server.url + "/", timeout=10).text
    finally:
        server.stop()
