"""Helpers of the end-to-end tests: a config file, cached demo engines, ``appliance serve`` as a subprocess.

The engines come from the demo bundles cached by the session's demo run
(``tests/appliance/_demo_run.py``): installing signed bundles takes seconds,
training takes minutes. The serve process writes its log to a file that a
failing assertion prints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.peers import Orthanc, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
SCANNER_AE = "DEMO-SCANNER"  # appliance.demo._scanner.SCANNER_AE_TITLE
NODE_AE = "APPLIANCE"
T = TypeVar("T")


def install_cached_engines(data_dir: Path, cache_dir: Path, precision: str = "fp32") -> dict[str, str]:
    """Install and activate the demo bundles listed in ``cache_dir/bundles.json``; return task -> version."""
    from engines.registry import Registry

    trusted = data_dir / "trusted_keys"
    trusted.mkdir(parents=True, exist_ok=True)
    for pub in (cache_dir / "keys").glob("*.pub"):
        shutil.copyfile(pub, trusted / pub.name)
    index = json.loads((cache_dir / "bundles.json").read_text())
    registry = Registry(data_dir / "engines", trusted)
    active = {}
    for task, by_precision in index["bundles"].items():
        manifest = registry.install(Path(by_precision[precision]), "e2e-test")
        registry.activate(task, manifest.version, "e2e-test")
        active[task] = manifest.version
    return active


def write_config(path: Path, data_dir: Path, orthanc: Orthanc, routes: Sequence[dict[str, Any]],
                 lease_seconds: float = 60.0) -> int:
    """Write the appliance TOML (loopback, one PACS named ``pacs``); return the node's port."""
    node_port = free_port()
    lines = [
        "[node]", f'ae_title = "{NODE_AE}"', 'host = "127.0.0.1"', f"port = {node_port}",
        f'data_dir = "{data_dir}"', "min_free_bytes = 50000000", "",
        "[[peers]]", f'ae_title = "{SCANNER_AE}"', 'host = "127.0.0.1"', "",
        "[[destinations]]", 'name = "pacs"', f'ae_title = "{orthanc.aet}"', 'host = "127.0.0.1"',
        f"port = {orthanc.dicom_port}", "",
        "[delivery]", "initial_backoff_seconds = 0.5", "max_backoff_seconds = 2.0", "",
        "[worker]", f"lease_seconds = {lease_seconds}", "",
        "[web]", 'host = "127.0.0.1"', "port = 0", "",
    ]
    for route in routes:
        lines.append("[[routes]]")
        for key, value in route.items():
            if key == "match":
                lines.append("match = {" + ", ".join(f'{k} = "{v}"' for k, v in value.items()) + "}")
            elif isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            else:
                lines.append(f"{key} = {value}")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return node_port


class Serve:
    """``appliance serve --config PATH`` as a subprocess whose output goes to ``log``."""

    def __init__(self, config: Path, node_port: int, log: Path) -> None:
        self.config, self.node_port, self.log = config, node_port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_CONFIG"}
        env["PYTHONPATH"] = str(ROOT)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from appliance.cli import main; main()", "serve", "--config", str(self.config)],
                cwd=self.config.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:  # the node listens once every component before it started
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                wait_for_port(self.node_port, timeout=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve did not listen in {timeout} s:\n{self.tail()}") from None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def tail(self, chars: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def jobs(data_dir: Path) -> list[dict[str, Any]]:
    """Every row of the jobs table (read-only connection, safe beside the running service)."""
    return _rows(data_dir, "select * from jobs order by created_at")


def deliveries(data_dir: Path) -> list[dict[str, Any]]:
    return _rows(data_dir, "select * from deliveries order by id")


def stored_files(data_dir: Path) -> dict[str, Path]:
    """SOP Instance UID -> spool file of every instance the node has committed."""
    return {r["sop_instance_uid"]: Path(r["path"]) for r in _rows(data_dir, "select sop_instance_uid, path from instances")}


def all_delivered(data_dir: Path) -> list[dict[str, Any]] | None:
    """The delivery rows once there are some and every one is ``delivered``, else None."""
    rows = deliveries(data_dir)
    return rows if rows and all(r["state"] == "delivered" for r in rows) else None


def _rows(data_dir: Path, sql: str) -> list[dict[str, Any]]:
    db = data_dir / "state.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]
    except sqlite3.OperationalError:  # the schema is not there yet
        return []
    finally:
        conn.close()


def wait_for(check: Callable[[], T | None], timeout: float, what: str, log: Callable[[], str] = lambda: "",
             interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{log()}")
        time.sleep(interval)


def status_json(config: Path) -> dict[str, Any]:
    """``appliance status --json --config PATH`` as a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", "from appliance.cli import main; main()", "status", "--json", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    return dict(json.loads(proc.stdout))


def temporaries(data_dir: Path) -> list[Path]:
    """Temporary files left in the spool or the outbox (``*.tmp`` and ``.*.tmp-*``)."""
    found: list[Path] = []
    for sub in ("spool", "outbox"):
        root = data_dir / sub
        if root.is_dir():
            found += [p for p in root.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or ".tmp-" in p.name)]
    return found
