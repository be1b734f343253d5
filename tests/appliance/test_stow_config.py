"""The ``[dicomweb]`` section, and STOW-RS ingest beside C-STORE on /metrics and the dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.ingest import stow_component
from appliance.state import StateStore
from appliance.web.app import create_app
from tests.dicom_node._stow_peer import post
from tests.peers import free_port, write_mr_instances

TOKEN = "metrics-token-0123456789"


def _ingest(client: TestClient) -> dict[tuple[str, str], float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {(s.labels["transport"], s.labels["outcome"]): s.value
            for f in families if f.name == "appliance_ingest_instances" for s in f.samples
            if s.name.endswith("_total")}


def test_stow_rs_ingest_is_counted_beside_dimse(tmp_path: Path) -> None:
    config = parse_config({"node": {"data_dir": str(tmp_path / "var"), "min_free_bytes": 0},
                           "dicomweb": {"port": free_port(), "clients": [{"name": "router", "token": TOKEN}]}})
    store = StateStore.for_data_dir(config.data_dir)
    server = stow_component(config, store)
    assert server is not None
    server.start()
    try:
        client = TestClient(create_app(config, store))
        before = _ingest(client)
        assert set(before) == {(t, o) for t in ("dimse", "stowrs") for o in ("stored", "failed")}
        paths = write_mr_instances(tmp_path / "mr", 3)
        assert post(server.url + "/studies", [p.read_bytes() for p in paths] + [b"not DICOM"], TOKEN).status_code == 202
        after = _ingest(client)
        assert after[("stowrs", "stored")] == before[("stowrs", "stored")] + 3
        assert after[("stowrs", "failed")] == before[("stowrs", "failed")] + 1
        assert after[("dimse", "stored")] == before[("dimse", "stored")]
        page = client.get("/").text
        assert f"STOW-RS {int(after[('stowrs', 'stored')])} stored, {int(after[('stowrs', 'failed')])} refused" in page
        assert f"C-STORE {int(after[('dimse', 'stored')])} stored" in page
    finally:
        server.stop()
        store.close()


@pytest.mark.parametrize(("section", "message"), [
    ({}, "require_token is true but no \\[\\[dicomweb.clients\\]\\]"),
    ({"clients": [{"name": "a", "token": "short"}]}, "token"),
    ({"clients": [{"name": "a", "token": TOKEN}, {"name": "b", "token": TOKEN}]}, "tokens must be unique"),
    ({"clients": [{"name": "bad name!", "token": TOKEN}]}, "name"),
    ({"require_token": False, "tls": {"cert": "/nonexistent.crt"}}, "does not exist"),
])
def test_dicomweb_configuration_errors_name_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"dicomweb": section})


def test_no_dicomweb_section_means_no_listener(tmp_path: Path) -> None:
    config = parse_config({"node": {"data_dir": str(tmp_path)}})
    store = StateStore.for_data_dir(tmp_path)
    try:
        assert config.dicomweb is None and stow_component(config, store) is None
        open_config = parse_config({"node": {"data_dir": str(tmp_path)}, "dicomweb": {"require_token": False}})
        server = stow_component(open_config, store)
        assert server is not None and server.port == 8081 and not server.require_token
    finally:
        store.close()
