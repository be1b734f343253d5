"""Helpers for the storage SCP tests: a node in this process, dcmtk storescu, instance files."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid

from appliance.ingest import StoreSink
from appliance.state import StateStore
from dicom_node.access import AccessPolicy, Peer
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from tests.peers import STORESCP, STORESCU, free_port, peer_env, wait_for_port

OUR_AE = "APPLIANCE"


@dataclass
class Node:
    scp: StorageSCP
    store: StateStore
    spool: Spool

    @property
    def port(self) -> int:
        return self.scp.port

    def instance_count(self) -> int:
        return int(self.store.query("select count(*) as n from instances")[0]["n"])


@contextmanager
def running_node(
    data_dir: Path, peers: Sequence[Peer] = (Peer("STORESCU", "127.0.0.1"),), min_free_bytes: int = 0
) -> Iterator[Node]:
    store = StateStore.for_data_dir(data_dir)
    spool = Spool(data_dir / "spool", min_free_bytes)
    scp = StorageSCP(OUR_AE, "127.0.0.1", free_port(), spool, StoreSink(store), AccessPolicy(OUR_AE, peers))
    scp.start()
    try:
        wait_for_port(scp.port)
        yield Node(scp, store, spool)
    finally:
        scp.stop()
        store.close()


def storescu(
    port: int, files: Sequence[Path | str], calling: str = "STORESCU", called: str = OUR_AE, *extra: str
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu, verbose; the caller judges the return code and output."""
    args = [str(STORESCU), "-v", "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(args, env=peer_env(), capture_output=True, text=True, timeout=300)


def acknowledged_files(output: str) -> list[str]:
    """Files storescu reported as answered Success, from its verbose output."""
    acked: list[str] = []
    current = ""
    for line in output.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = ""
    return acked


def dataset_bytes(path: Path | str) -> bytes:
    """The encoded data set of a DICOM file, after its File Meta."""
    with open(path, "rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        return fp.read()


def pydicom_file(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, f"pydicom test file {name} is missing"
    return Path(str(found))


def write_mr_series(out: Path, count: int, seed_file: str = "MR_small.dcm") -> list[Path]:
    """``count`` ~10 KB MR instances of one series, each with its own SOP Instance UID."""
    out.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(pydicom_file(seed_file))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    paths = []
    for index in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        path = out / f"mr{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def as_sent_by_storescu(path: Path, work: Path, propose: str) -> bytes:
    """The data set bytes storescu puts on the wire for ``path``, as dcmtk storescp keeps them bit for bit.

    ``propose`` is storescu's ``-x?`` option; storescp prefers the same syntax (``+x?``).
    """
    out = work / "storescp"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [str(STORESCP), "--aetitle", OUR_AE, "+" + propose[1:], "--bit-preserving", "--output-directory", str(out), str(port)],
        env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        sent = storescu(port, [path], "STORESCU", OUR_AE, "-R", propose)
        assert sent.returncode == 0, sent.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    (received,) = [p for p in out.iterdir() if p.is_file()]
    return dataset_bytes(received)
