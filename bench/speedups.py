"""The pynetdicom speed-ups (``dicom_node.speedups``): on against off, same machine, same run.

    .venv/bin/python bench/speedups.py [--count N] [--rounds R]

Two directions, each measured with the speed-ups on and off in alternating rounds
(the median rate is reported, with the ratio on/off):

* receive: dcmtk ``storescu`` (TCP_NODELAY=1, one association) sends N small MR
  instances (pydicom's MR_small, about 10 KB, new UIDs each) to the node's
  ``StorageSCP`` committing into a real state store;
* send: the node's ``StorageSCU`` sends the same N files over one association to
  dcmtk ``storescp``.

The switch is the one the service has (``DICOM_NODE_PYNETDICOM_SPEEDUPS=0`` at start,
``speedups.set_enabled`` here); nothing else changes between the two runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.ingest import StoreSink  # noqa: E402
from appliance.state import StateStore  # noqa: E402
from dicom_node import speedups  # noqa: E402
from dicom_node.access import AccessPolicy, Peer  # noqa: E402
from dicom_node.scp import StorageSCP  # noqa: E402
from dicom_node.scu import Destination, StorageSCU  # noqa: E402
from dicom_node.spool import Spool  # noqa: E402
from tests.peers import STORESCU, free_port, peer_env, running_storescp, write_mr_instances  # noqa: E402


def receive(work: Path, files: list[Path]) -> float:
    """Instances/s of dcmtk storescu into a fresh StorageSCP."""
    store = StateStore.for_data_dir(work)
    scp = StorageSCP("APPLIANCE", "127.0.0.1", free_port(), Spool(work / "spool"), StoreSink(store),
                     AccessPolicy("APPLIANCE", [Peer("STORESCU", "127.0.0.1")]))
    scp.start()
    try:
        started = time.perf_counter()
        subprocess.run([str(STORESCU), "-aet", "STORESCU", "-aec", "APPLIANCE", "127.0.0.1", str(scp.port),
                        *map(str, files)], env=peer_env(), check=True, capture_output=True, timeout=600)
        elapsed = time.perf_counter() - started
        stored = store.query("select count(*) as n from instances")[0]["n"]
    finally:
        scp.stop()
        store.close()
    if stored != len(files):
        raise SystemExit(f"the node stored {stored} of {len(files)} instances")
    return len(files) / elapsed


#: C-STOREs the SCU could not send, by round ("on"/"off"); the delivery sender would retry them later
FAILED: dict[str, list[int]] = {"on": [], "off": []}


def send(work: Path, files: list[Path]) -> float:
    """Instances/s of the node's StorageSCU into a fresh dcmtk storescp (files sent, over the time taken).

    With the speed-ups off, pynetdicom's reactor sometimes takes a C-STORE-RSP that
    ``send_c_store`` waits for (its pause is racy, pynetdicom issue #875): that file
    fails after the DIMSE timeout (5 s here) and the association is given up.
    """
    with running_storescp(work / "out") as port:
        started = time.perf_counter()
        results = StorageSCU("APPLIANCE", timeout=5).send_files(
            Destination("storescp", "STORESCP", "127.0.0.1", port), files)
        elapsed = time.perf_counter() - started
    failed = [r for r in results if not r.ok]
    FAILED["on" if speedups.enabled() else "off"].append(len(failed))
    return (len(files) - len(failed)) / elapsed


def measure(name: str, run: Callable[[Path, list[Path]], float], root: Path, files: list[Path], rounds: int) -> None:
    rates: dict[bool, list[float]] = {True: [], False: []}
    for index in range(rounds):
        for on in (True, False) if index % 2 == 0 else (False, True):
            speedups.set_enabled(on)
            work = root / f"{name}-{index}-{'on' if on else 'off'}"
            work.mkdir()
            rates[on].append(run(work, files))
    speedups.set_enabled(True)
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"{name:8s} speed-ups on {on:7.1f}/s   off {off:7.1f}/s   on/off {on / off:5.2f}x   "
          f"(median of {rounds}, {len(files)} instances; on {_rounded(rates[True])}, off {_rounded(rates[False])})")


def _rounded(rates: list[float]) -> list[float]:
    return [round(r, 1) for r in rates]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not speedups.SUPPORTED:
        raise SystemExit("pynetdicom is not 3.0.x: the speed-ups are never on here")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_mr_instances(root / "in", args.count)
        measure("receive", receive, root, files, args.rounds)
        measure("send", send, root, files, args.rounds)
        print(f"send     C-STOREs failed per round: on {FAILED['on']}, off {FAILED['off']} (of {len(files)})")


if __name__ == "__main__":
    main()
