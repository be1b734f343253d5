"""The systemd units verify with systemd-analyze; sysusers/tmpfiles apply to a scratch root; sd_notify works."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import _sdnotify
from appliance.config import load_config

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
UNIT_EXEC = "/opt/appliance/venv/bin/appliance"
VENV_APPLIANCE = Path(sys.executable).parent / "appliance"

needs_analyze = pytest.mark.skipif(not Path(ANALYZE).exists(), reason="systemd-analyze is not installed")


def _unit_with_venv(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's ``appliance`` script, so verify can check it."""
    assert VENV_APPLIANCE.exists(), f"{VENV_APPLIANCE} is missing: install the project into the venv"
    text = (SYSTEMD / "appliance.service").read_text()
    assert UNIT_EXEC in text
    unit = tmp_path / "appliance.service"
    unit.write_text(text.replace(UNIT_EXEC, str(VENV_APPLIANCE)))
    return unit


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=120)


@needs_analyze
def test_service_verifies_cleanly(tmp_path: Path) -> None:
    proc = _analyze("verify", str(_unit_with_venv(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "" and proc.stdout.strip() == "", "no warnings (unknown keys, bad values)"


@needs_analyze
def test_verify_checks_exec_start(tmp_path: Path) -> None:
    """The installed path is what the unit names: without it verify fails, so the check above means something."""
    unit = tmp_path / "appliance.service"
    shutil.copy(SYSTEMD / "appliance.service", unit)
    proc = _analyze("verify", str(unit))
    assert proc.returncode != 0 and f"{UNIT_EXEC} is not executable" in proc.stderr


@needs_analyze
def test_service_hardening_exposure(tmp_path: Path) -> None:
    proc = _analyze("security", "--offline=yes", "--no-pager", str(_unit_with_venv(tmp_path)))
    found = re.search(r"Overall exposure level for appliance\.service: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr
    assert float(found.group(1)) <= 2.5, f"exposure {found.group(1)} is worse than 2.5"


def test_unit_has_the_required_settings() -> None:
    text = (SYSTEMD / "appliance.service").read_text()
    for line in (
        "Type=notify", "Restart=on-failure", "User=appliance", "StateDirectory=appliance",
        "ConfigurationDirectory=appliance", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "ProtectSystem=strict",
        "PrivateTmp=yes", "NoNewPrivileges=yes",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line


def test_example_configuration_loads() -> None:
    config = load_config(SYSTEMD / "appliance.toml")
    assert config.node.port == 104 and str(config.data_dir) == "/var/lib/appliance"
    assert [r.pipeline for r in config.routes] == ["pathology", "breast_mri"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_the_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "appliance.sysusers.conf")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^appliance:x:\d+:\d+:[^:]*:/var/lib/appliance:/usr/sbin/nologin$", passwd, re.MULTILINE)


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None or os.geteuid() != 0,
                    reason="systemd-tmpfiles missing, or not root (it must chown to the appliance user)")
def test_tmpfiles_create_the_directories(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "appliance.sysusers.conf")],
                   check=True, capture_output=True, timeout=60)
    proc = subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create",
                           str(SYSTEMD / "appliance.tmpfiles.conf")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    uid = int((tmp_path / "etc" / "passwd").read_text().split(":")[2])
    for sub in ("spool", "outbox", "engines"):
        path = tmp_path / "var/lib/appliance" / sub
        assert path.is_dir() and path.stat().st_uid == uid and oct(path.stat().st_mode & 0o777) == "0o750"


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_sends_ready(tmp_path: Path, abstract: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        if abstract:
            name = f"appliance-test-{os.getpid()}"
            server.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify.sock")
            server.bind(address)
        server.settimeout(5)
        assert _sdnotify.notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": address})
        assert server.recv(4096) == b"READY=1\nSTATUS=serving"


def test_sd_notify_without_socket_does_nothing() -> None:
    assert _sdnotify.notify("READY=1", {}) is False
    assert _sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "relative"}) is False
