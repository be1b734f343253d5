"""C-STORE data sets stream to disk as they arrive: memory stays bounded, bytes stay as sent.

A few-hundred-MB instance is sent by dcmtk ``storescu`` to a node running in its
own process; the node's resident memory is sampled while it receives. The
1.2 GB figure lives in ``bench/ingest.py``.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from appliance.state import StateStore
from dicom_node import speedups
from tests.dicom_node._large import data_set_digest, write_large_instance
from tests.dicom_node._node import OUR_AE, pydicom_file, running_node, storescu
from tests.dicom_node._served import served_node
from tests.peers import STORESCU, peer_env

pytestmark = pytest.mark.slow  # hundreds of MiB through the node

INSTANCE_MIB = 256
#: what one association may add to the node's resident memory while it receives (PDU, write block, scanner)
GROWTH_LIMIT_MIB = 48


def _stored(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "spool").rglob("*.dcm") if ".incoming" not in p.parts]


def test_large_instance_streams_to_disk_with_bounded_memory(data_dir: Path, tmp_path: Path) -> None:
    source = write_large_instance(tmp_path / "large.dcm", INSTANCE_MIB << 20)
    with served_node(data_dir) as node:
        idle = node.rss_mib()
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], node.rss_mib())

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            proc = subprocess.run(
                [str(STORESCU), "-aet", "STORESCU", "-aec", OUR_AE, "-R", "-xe", "127.0.0.1", str(node.port), str(source)],
                env=peer_env(), capture_output=True, text=True, timeout=300,
            )
        finally:
            done.set()
            sampler.join()
        assert proc.returncode == 0, proc.stderr + node.log_text()
        growth = max(peak[0], node.peak_mib()) - idle
        assert growth < GROWTH_LIMIT_MIB, f"resident memory grew {growth:.0f} MiB receiving {INSTANCE_MIB} MiB"
    (stored,) = _stored(data_dir)
    assert data_set_digest(stored) == data_set_digest(source)
    assert not list((data_dir / "spool" / ".incoming").iterdir())
    store = StateStore.for_data_dir(data_dir)
    try:
        (row,) = store.query("select size, header from instances")
        assert row["size"] == stored.stat().st_size and row["header"]
    finally:
        store.close()


def test_pynetdicoms_own_acceptor_stores_the_same_bytes(data_dir: Path, tmp_path: Path) -> None:
    """With the speed-ups off (or another pynetdicom series): pynetdicom's acceptor and its chunked receive."""
    source = write_large_instance(tmp_path / "large.dcm", 8 << 20)
    with speedups.disabled(), running_node(data_dir) as node:
        proc = storescu(node.port, [source, pydicom_file("MR_small.dcm")], "STORESCU", OUR_AE, "-R", "-xe")
        assert proc.returncode == 0 and node.instance_count() == 2, proc.stderr
        stored = {p.name: p for p in _stored(data_dir)}
    assert len(stored) == 2
    assert any(data_set_digest(p) == data_set_digest(source) for p in stored.values())


def test_parallel_large_instances_stay_bounded(data_dir: Path, tmp_path: Path) -> None:
    """Four associations at once, each a 48 MiB instance: memory grows by a constant per association."""
    sources = [write_large_instance(tmp_path / f"large{i}.dcm", 48 << 20) for i in range(4)]
    with served_node(data_dir) as node:
        idle = node.rss_mib()
        procs = [
            subprocess.Popen(
                [str(STORESCU), "-aet", "STORESCU", "-aec", OUR_AE, "-R", "-xe", "127.0.0.1", str(node.port), str(path)],
                env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for path in sources
        ]
        assert [p.wait(timeout=300) for p in procs] == [0] * 4
        growth = node.peak_mib() - idle
        assert growth < 4 * GROWTH_LIMIT_MIB, f"resident memory grew {growth:.0f} MiB"
    assert sorted(data_set_digest(p) for p in _stored(data_dir)) == sorted(data_set_digest(p) for p in sources)
