"""Delivery benchmark: our storage SCU vs dcmtk storescu, both sending to dcmtk storescp.

    .venv/bin/python bench/deliver.py [--quick] [--count N] [--rounds R]

N small MR instances (pydicom's MR_small, about 10 KB, new UIDs each) are sent
over loopback to one dcmtk ``storescp`` (TCP_NODELAY=1), in the same run, by:

* dcmtk ``/usr/bin/storescu`` (TCP_NODELAY=1), one association: the reference;
* our ``dicom_node.scu.StorageSCU.send_files``, one association: the delivery path;
* a plain pynetdicom SCU (``AE.associate`` + ``send_c_store(path)``), the baseline
  with the ~47 ms per C-STORE floor, on fewer files; and the same with only
  TCP_NODELAY set, to show what the floor was.

Each of the first two runs ``--rounds`` times, alternating; the median rate is
reported. Goal: ours >= 0.5x storescu.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.scu import Destination, StorageSCU  # noqa: E402
from tests.peers import write_mr_instances  # noqa: E402

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
AET = "STORESCP"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def timed_into_storescp(out: Path, send: Callable[[int], None], count: int) -> float:
    """Instances/s of ``send(port)`` into a fresh storescp writing into an empty ``out``."""
    out.mkdir()
    port = free_port()
    scp = subprocess.Popen(
        [STORESCP, "--aetitle", AET, "--output-directory", str(out), "--accept-all", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(port)
        started = time.perf_counter()
        send(port)
        elapsed = time.perf_counter() - started
    finally:
        scp.terminate()
        scp.wait(timeout=20)
    stored = len(list(out.iterdir()))
    if stored != count:
        raise SystemExit(f"storescp stored {stored} of {count} instances")
    return count / elapsed


def dcmtk_storescu(port: int, directory: Path) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}
    cmd = [STORESCU, "-aec", AET, "+sd", "127.0.0.1", str(port), str(directory)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ours(port: int, paths: list[Path]) -> None:
    results = StorageSCU("BENCH", timeout=30).send_files(Destination("storescp", AET, "127.0.0.1", port), paths)
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} C-STOREs failed, first: {failed[0].error}")


def plain_pynetdicom(port: int, paths: list[Path], nodelay: bool) -> None:
    def set_nodelay(event: evt.Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(MRImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    handlers = [(evt.EVT_CONN_OPEN, set_nodelay)] if nodelay else []
    assoc = ae.associate("127.0.0.1", port, ae_title=AET, evt_handlers=handlers)
    if not assoc.is_established:
        raise SystemExit("plain pynetdicom could not associate with storescp")
    for path in paths:
        status = assoc.send_c_store(path)
        if status.Status != 0:
            raise SystemExit(f"plain pynetdicom: status 0x{status.Status:04X}")
    assoc.release()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 instances, 1 round, 40 for the baseline")
    ap.add_argument("--count", type=int, help="instances per run (default 1000)")
    ap.add_argument("--rounds", type=int, help="rounds of storescu and ours (default 3)")
    args = ap.parse_args()
    count = args.count or (200 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 3)
    baseline_count = 40 if args.quick else 150
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_mr_instances(root / "in", count)
        print(f"{count} x {paths[0].stat().st_size / 1000:.1f} kB MR instances -> dcmtk storescp over loopback")
        theirs_rates, our_rates = [], []
        for index in range(rounds):
            theirs_rates.append(timed_into_storescp(root / f"theirs{index}", lambda p: dcmtk_storescu(p, root / "in"), count))
            our_rates.append(timed_into_storescp(root / f"ours{index}", lambda p: ours(p, paths), count))
        base = paths[:baseline_count]
        plain = timed_into_storescp(root / "plain", lambda p: plain_pynetdicom(p, base, nodelay=False), len(base))
        nodelay = timed_into_storescp(root / "nodelay", lambda p: plain_pynetdicom(p, base, nodelay=True), len(base))
    theirs_rate, our_rate = statistics.median(theirs_rates), statistics.median(our_rates)
    print(f"dcmtk storescu           {theirs_rate:8.0f} instances/s  (rounds: {', '.join(f'{r:.0f}' for r in theirs_rates)})")
    print(f"ours (StorageSCU)        {our_rate:8.0f} instances/s  (rounds: {', '.join(f'{r:.0f}' for r in our_rates)})")
    print(f"plain pynetdicom         {plain:8.1f} instances/s  ({1000 / plain:.1f} ms per C-STORE, {len(base)} files)")
    print(f"pynetdicom + NODELAY     {nodelay:8.1f} instances/s  ({1000 / nodelay:.1f} ms per C-STORE, {len(base)} files)")
    ratio = our_rate / theirs_rate
    print(f"ratio ours/storescu      {ratio:8.2f}x  (goal >= 0.5x): {'met' if ratio >= 0.5 else 'NOT met'}")
    print(f"ours vs plain pynetdicom {our_rate / plain:8.1f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
