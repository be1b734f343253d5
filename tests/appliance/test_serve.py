"""``appliance serve`` on embedded defaults (no configuration file) and ``appliance status --json``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from appliance.config import DEFAULT_CONFIG_PATH, Config
from appliance.service import Service
from tests.peers import STORESCU, peer_env, wait_for_port


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from appliance.cli import main; main()", *args]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_serve_without_configuration_then_status_counts(tmp_path: Path) -> None:
    port = Config().node.port
    if DEFAULT_CONFIG_PATH.exists():
        pytest.skip(f"{DEFAULT_CONFIG_PATH} exists on this machine; the test needs built-in defaults")
    if not _port_free(port):
        pytest.skip(f"the default DICOM port {port} is in use by another process")
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_CONFIG"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    node = subprocess.Popen(_cli("serve"), cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        wait_for_port(port)
        sent = subprocess.run(
            [str(STORESCU), "-aet", "STORESCU", "-aec", "APPLIANCE", "127.0.0.1", str(port),
             str(get_testdata_file("MR_small.dcm")), str(get_testdata_file("CT_small.dcm"))],
            env=peer_env(), capture_output=True, text=True, timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
    finally:
        node.send_signal(signal.SIGTERM)
        code = node.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
    assert (tmp_path / "var" / "state.db").is_file()
    status = subprocess.run(_cli("status", "--json"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["instances"] == 2 and report["studies"] == 2
    assert report["jobs"]["queued"] >= 0 and set(report["deliveries"]) >= {"pending", "delivered", "dead"}


class _Recorder:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self._log, self._fail = name, log, fail

    def start(self) -> None:
        if self._fail:
            raise RuntimeError(f"{self.name} cannot start")
        self._log.append(f"start {self.name}")

    def stop(self) -> None:
        self._log.append(f"stop {self.name}")


def test_service_starts_in_order_and_stops_in_reverse(tmp_path: Path) -> None:
    log: list[str] = []
    config = Config.model_validate({"node": {"data_dir": str(tmp_path / "var")}})
    service = Service(config, factories=[], components=[_Recorder("a", log), _Recorder("b", log)])
    service.request_stop()
    service.run(install_signals=False)
    service.stop()  # idempotent
    assert log == ["start a", "start b", "stop b", "stop a"]


def test_service_stops_started_components_when_one_fails(tmp_path: Path) -> None:
    log: list[str] = []
    config = Config.model_validate({"node": {"data_dir": str(tmp_path / "var")}})
    service = Service(config, factories=[], components=[_Recorder("a", log), _Recorder("b", log, fail=True)])
    with pytest.raises(RuntimeError, match="b cannot start"):
        service.run(install_signals=False)
    assert log == ["start a", "stop a"]


def test_components_are_built_by_callables_in_start_order(tmp_path: Path) -> None:
    """Issue 16: factories are objects a reader can follow, not ``"module:function"`` strings."""
    from appliance.service import COMPONENT_FACTORIES

    assert all(callable(factory) and not isinstance(factory, str) for factory in COMPONENT_FACTORIES)
    config = Config.model_validate({"node": {"data_dir": str(tmp_path / "var")},
                                    "destinations": [{"name": "pacs", "ae_title": "PACS", "port": 4242}]})
    service = Service(config)
    try:
        assert [c.name for c in service._build()] == ["dicom-node", "assembly", "worker", "delivery", "web"]
    finally:
        service.stop()
