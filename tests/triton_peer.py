"""A real Triton Inference Server for tests and benches: PyTriton's ``tritonserver`` hosting ONNX models.

:func:`start_triton` runs ``tests/_triton_serve.py`` under the Triton virtual
environment (``.venv-triton`` at the repository root, made by
``scripts/setup.sh``) in a new process group, on ports picked here, and waits
until the server and every model answer ready. :meth:`TritonServer.kill` sends
SIGKILL to the whole group (``tritonserver`` and its Python-backend stubs): a
server that dies, not one that shuts down politely.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.peers import free_port

__all__ = ["TRITON_PYTHON", "TritonServer", "served_model", "start_triton", "triton_available"]

ROOT = Path(__file__).resolve().parents[1]
TRITON_PYTHON = Path(os.environ.get("TRITON_VENV", ROOT / ".venv-triton")) / "bin" / "python"
SERVE_SCRIPT = Path(__file__).with_name("_triton_serve.py")
START_TIMEOUT = 120.0
SHM = "/dev/shm"


def triton_available() -> bool:
    return TRITON_PYTHON.exists()


def require_triton() -> None:
    if not triton_available():
        pytest.skip(f"no Triton virtual environment at {TRITON_PYTHON.parent.parent} (scripts/setup.sh makes it)")


def served_model(name: str, onnx: Path, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
                 batching: bool = True, max_batch_size: int = 64) -> dict[str, Any]:
    """One model of the serving spec; shapes with the batch dimension, -1 or a name for dynamic."""
    def dims(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": e["name"], "dtype": e["dtype"], "shape": [d if isinstance(d, int) else -1 for d in e["shape"]]}
                for e in entries]
    return {"name": name, "onnx": str(onnx), "batching": batching, "max_batch_size": max_batch_size,
            "inputs": dims(inputs), "outputs": dims(outputs)}


@dataclass
class TritonServer:
    """A running tritonserver: its ports, process and log."""

    workdir: Path
    models: list[dict[str, Any]]
    threads: int = 1
    http_port: int = 0
    grpc_port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _shm_before: set[str] = field(default_factory=set, repr=False)

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log(self) -> Path:
        return self.workdir / "triton.log"

    def start(self) -> TritonServer:
        """Start on fresh ports (or the ones it had: a restart keeps its URLs) and wait until ready."""
        self.launch()
        self.wait_ready()
        return self

    def launch(self) -> None:
        """Start the process without waiting (to start several servers at once, then :meth:`wait_ready`)."""
        require_triton()
        self._shm_before = _shm_files()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        spec = self.workdir / "spec.json"
        spec.write_text(json.dumps({"http_port": self.http_port, "grpc_port": self.grpc_port,
                                    "threads": self.threads, "models": self.models}), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update(OMP_NUM_THREADS=str(self.threads), PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([str(TRITON_PYTHON), str(SERVE_SCRIPT), str(spec)], stdout=log,
                                            stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                            start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        urls = [f"{self.http_url}/v2/health/ready"] + [f"{self.http_url}/v2/models/{m['name']}/ready" for m in self.models]
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}: {self._tail()}")
            if all(_ok(url) for url in urls):
                return
            time.sleep(0.2)  # polling a server that is starting: nothing to wait on but its port
        self.kill()
        raise RuntimeError(f"tritonserver not ready within {START_TIMEOUT:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server's whole process group and reap it."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.process = None
        _remove_orphaned_shm(_shm_files() - self._shm_before)

    def stop(self) -> None:
        """Ask politely (SIGINT), then kill what is left of the group."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self.kill()


def _shm_files() -> set[str]:
    try:
        return set(os.listdir(SHM))
    except OSError:
        return set()


def _remove_orphaned_shm(names: set[str]) -> None:
    """Shared-memory segments a killed server left behind (PyTriton's tensors), unless a process still maps them."""
    if not names:
        return
    used: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                used.update(line.split(SHM + "/", 1)[1].split()[0] for line in maps if SHM + "/" in line)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(SHM + "/"):
                    used.add(target[len(SHM) + 1:].split()[0])
        except OSError:
            continue
    for name in names - used:
        try:
            os.unlink(os.path.join(SHM, name))
        except OSError:
            pass


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_triton(workdir: Path, models: list[dict[str, Any]], threads: int = 1) -> TritonServer:
    """A started :class:`TritonServer` serving ``models`` (see :func:`served_model`)."""
    return TritonServer(workdir, models, threads).start()
