"""The dashboard and the metrics show DICOMweb (STOW-RS) deliveries beside DIMSE ones, without credentials."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.config import parse_config
from appliance.state import StateStore
from appliance.web import WebServer, create_app

TOKEN = "BEARER-SECRET-42"


@pytest.fixture
def server(data_dir: Path) -> Iterator[WebServer]:
    config = parse_config({
        "node": {"data_dir": str(data_dir), "min_free_bytes": 1},
        "destinations": [
            {"name": "pacs", "ae_title": "ORTHANC", "port": 4242},
            {"name": "cloud", "kind": "dicomweb", "url": "https://archive.example/dicom-web", "token": TOKEN},
        ],
        "web": {"port": 0},
    })
    store = StateStore.for_data_dir(data_dir)
    now = time.time()
    rows = [("pacs", "1.2.3.1", "delivered", ""), ("cloud", "1.2.3.1", "delivered", ""),
            ("cloud", "1.2.3.2", "dead", "cloud (https://archive.example/dicom-web) refused the instance: HTTP 403"),
            ("cloud", "1.2.3.3", "pending", "")]
    with store.atomic() as db:
        db["deliveries"].insert_all(
            {"job_id": "j", "destination": d, "path": "x", "sop_instance_uid": uid, "state": state, "attempts": 1,
             "next_attempt_at": now, "created_at": now - 1, "delivered_at": now if state == "delivered" else 0,
             "last_error": error}
            for d, uid, state, error in rows
        )
    web = WebServer(create_app(config, store), "127.0.0.1", 0)
    web.start()
    try:
        yield web
    finally:
        web.stop()
        store.close()


def test_dashboard_lists_each_destination_with_its_kind_and_target(server: WebServer) -> None:
    page = httpx.get(server.url + "/", timeout=10).text
    assert "DIMSE (C-STORE)" in page and "ORTHANC@127.0.0.1:4242" in page
    assert "DICOMweb (STOW-RS)" in page and "https://archive.example/dicom-web" in page
    assert "refused the instance: HTTP 403" in page
    assert TOKEN not in page


def test_metrics_label_destinations_and_deliveries_by_kind(server: WebServer) -> None:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("appliance_destination_kind", (("destination", "cloud"), ("kind", "dicomweb")))] == 1
    assert samples[("appliance_destination_kind", (("destination", "pacs"), ("kind", "dimse")))] == 1
    assert samples[("appliance_deliveries_by_kind", (("kind", "dicomweb"), ("state", "delivered")))] == 1
    assert samples[("appliance_deliveries_by_kind", (("kind", "dicomweb"), ("state", "dead")))] == 1
    assert samples[("appliance_deliveries_by_kind", (("kind", "dicomweb"), ("state", "pending")))] == 1
    assert samples[("appliance_deliveries_by_kind", (("kind", "dimse"), ("state", "delivered")))] == 1
    assert samples[("appliance_deliveries_by_kind", (("kind", "dimse"), ("state", "dead")))] == 0
    assert samples[("appliance_deliveries", (("destination", "cloud"), ("state", "dead")))] == 1
    assert TOKEN not in text
