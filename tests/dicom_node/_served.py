"""A storage SCP in its own process, so tests can measure its memory and read its log.

``python -m tests.dicom_node._served DATA_DIR PORT SETTINGS_JSON``: settings hold
``limits`` and ``dataset_limits`` (keyword arguments of the dataclasses),
``peers`` ([[AE title, host], ...]) and optional ``tls`` ([cert, key]). Prints
``ready`` once listening; stops when its stdin closes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers import free_port


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """A memory figure of a process from /proc (VmRSS now, VmHWM the peak), in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
    assert match, text
    return int(match.group(1))


@dataclass
class ServedNode:
    process: subprocess.Popen[str]
    port: int
    data_dir: Path
    log: list[str] = field(default_factory=list)

    def rss_mib(self) -> float:
        return rss_kib(self.process.pid) / 1024

    def peak_mib(self) -> float:
        return rss_kib(self.process.pid, "VmHWM") / 1024

    def log_text(self) -> str:
        return "\n".join(self.log)

    def wait_for_log(self, needle: str, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return True
            time.sleep(0.05)
        return False


@contextmanager
def served_node(data_dir: Path, settings: dict[str, Any] | None = None) -> Iterator[ServedNode]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.dicom_node._served", str(data_dir), str(port), json.dumps(settings or {})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    node = ServedNode(process, port, data_dir)
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            node.log.append(line.rstrip("\n"))
            if line.startswith("ready"):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(60), node.log_text()
        yield node
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _main() -> None:
    from appliance.ingest import StoreSink
    from appliance.state import StateStore
    from dicom_node.access import AccessPolicy, Peer
    from dicom_node.limits import DataSetLimits, NetworkLimits
    from dicom_node.scp import StorageSCP
    from dicom_node.spool import Spool
    from dicom_node.tls import server_context

    data_dir, port, settings = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    store = StateStore.for_data_dir(data_dir)
    peers = [Peer(ae, host) for ae, host in settings.get("peers", [["STORESCU", "127.0.0.1"]])]
    tls = settings.get("tls")
    scp = StorageSCP(
        "APPLIANCE", "127.0.0.1", port, Spool(data_dir / "spool"), StoreSink(store),
        AccessPolicy("APPLIANCE", peers),
        ssl_context=server_context(*tls) if tls else None,
        limits=NetworkLimits(**settings.get("limits", {})),
        dataset_limits=DataSetLimits(**settings.get("dataset_limits", {})),
    )
    scp.start()
    print("ready", flush=True)
    sys.stdin.read()
    scp.stop()
    store.close()


if __name__ == "__main__":
    _main()
