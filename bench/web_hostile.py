"""Resident memory of ``appliance serve`` under hostile and oversized dashboard requests (issue 15, finding 6).

Starts ``appliance serve`` (DICOM node, worker and dashboard in one process, as
in production) with a token, then measures the process's peak resident memory
(``VmHWM``) against its resident memory just before (the baseline, same run):

1. four 512 MB POSTs without a token at once, each client pushing its whole
   body for as long as the server takes it (the server should answer 401 from
   the headers and close);
2. one authenticated 512 MB upload (chunked, not a bundle): streamed to disk,
   then refused by the registry (the body is never held in memory).

Usage::

    .venv/bin/python bench/web_hostile.py [--mb 512] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.peers import free_port, wait_for_port  # noqa: E402

TOKEN = "bench-token"
BLOCK = b"a" * (1 << 20)


def _kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def _push_unauthenticated(port: int, size: int) -> tuple[str, int]:
    """Send a whole ``size``-byte form body without a token; (status line, bytes the server took)."""
    head = (f"POST /engines/install HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded"
            f"\r\nContent-Length: {size}\r\n\r\n").encode()
    pushed = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        try:
            while pushed < size:
                pushed += sock.send(BLOCK[: size - pushed])
        except OSError:
            pass
        try:
            answer = sock.recv(4096).decode("latin-1").split("\r\n", 1)[0]
        except OSError as exc:
            answer = f"({type(exc).__name__})"
    return answer, pushed


def _chunks(size: int) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        part = BLOCK[: size - sent]
        sent += len(part)
        yield part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="body size of each request in MB")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    size = args.mb << 20
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="web-hostile-"))
    web_port, node_port = free_port(), free_port()
    cfg = root / "appliance.toml"
    cfg.write_text(f'[node]\ndata_dir = "{root / "var"}"\nport = {node_port}\nmin_free_bytes = 1\n'
                   f'[web]\nport = {web_port}\ntoken = "{TOKEN}"\nmax_upload_bytes = {2 * size}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(root / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", "from appliance.cli import main; main()", "serve",
                                 "--config", str(cfg)], cwd=root, env=env, stdout=log, stderr=log)
        try:
            wait_for_port(web_port, timeout=120)
            before = _kb(proc.pid, "VmRSS")
            started = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda _: _push_unauthenticated(web_port, size), range(4)))
            hostile_s = time.monotonic() - started
            after_hostile = _kb(proc.pid, "VmHWM")
            started = time.monotonic()
            upload = httpx.post(f"http://127.0.0.1:{web_port}/engines/install", content=_chunks(size), timeout=600,
                                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-tar"})
            upload_s = time.monotonic() - started
            after_upload = _kb(proc.pid, "VmHWM")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(f"baseline resident memory of appliance serve: {before / 1024:.0f} MB")
    for status, pushed in results:
        print(f"unauthenticated {args.mb} MB POST: {status!r}, server took {pushed / 2**20:.1f} MB of the body")
    print(f"4 at once: {hostile_s:.2f} s, peak resident growth {(after_hostile - before) / 1024:.1f} MB")
    print(f"authenticated {args.mb} MB upload: HTTP {upload.status_code} in {upload_s:.1f} s "
          f"({upload.text.strip()[:90]}), peak resident growth {(after_upload - before) / 1024:.1f} MB")
    leftovers = list((root / "var" / "uploads").glob("*"))
    print(f"files left in uploads/: {len(leftovers)}")


if __name__ == "__main__":
    main()
