"""The demo's PACS: Orthanc on free loopback ports when installed, else the node's own storage SCP.

Both answer :meth:`LocalPacs.find_sr` (the Structured Reports that arrived for
a study) so the demo can tell when a result is in the PACS. Orthanc is asked
through its REST ``/tools/find`` (the SR counts as arrived once it is indexed);
the fallback SCP records every instance it made durable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import ApplianceError
from dicom_node.access import AccessPolicy, Peer
from dicom_node.errors import DuplicateInstance
from dicom_node.scp import InstanceRecord, StorageSCP
from dicom_node.spool import Spool

__all__ = [
    "ORTHANC", "LocalPacs", "OrthancPacs", "SrArrival", "StoreScpPacs", "free_port", "launch_orthanc", "start_pacs",
    "stop_process",
]

logger = logging.getLogger(__name__)

ORTHANC = Path("/usr/sbin/Orthanc")
PACS_AE_TITLE = "DEMO-PACS"
_START_TIMEOUT = 60.0
APPLIANCE_AE_TITLE = "APPLIANCE"  #: the demo appliance's AE title, the one peer the fallback PACS accepts


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float, alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline or (alive is not None and not alive()):
                raise ApplianceError(f"the local PACS does not listen on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def orthanc_config(name: str, database: Path, ae_title: str, dicom_port: int, http_port: int) -> dict[str, Any]:
    """An Orthanc configuration for a local PACS on loopback ports.

    Orthanc 1.10 cannot bind one address: it refuses remote HTTP instead (``RemoteAccessAllowed``).
    """
    return {
        "Name": name,
        "StorageDirectory": str(database),
        "IndexDirectory": str(database),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": True,
        "Plugins": [],
        "StableAge": 1,
    }


def launch_orthanc(
    executable: Path, config: dict[str, Any], storage: Path, timeout: float = _START_TIMEOUT
) -> subprocess.Popen[bytes]:
    """Start Orthanc with ``config`` (written to ``storage/orthanc.json``; log beside it) and TCP_NODELAY.

    Returns once its REST API and its DICOM port answer; a process that exits or
    does not answer within ``timeout`` is stopped and reported naming its log.
    """
    import httpx

    storage.mkdir(parents=True, exist_ok=True)
    cfg = storage / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(storage / "orthanc.log", "ab")  # noqa: SIM115 - owned by the process
    env = {**os.environ, "TCP_NODELAY": "1"}
    process = subprocess.Popen([str(executable), str(cfg)], stdout=log, stderr=log, env=env)
    log.close()
    url = f"http://127.0.0.1:{config['HttpPort']}"
    users = (config.get("RegisteredUsers") or {}) if config.get("AuthenticationEnabled") else {}
    auth = next(iter(users.items()), None)  # with HTTP authentication on, /system needs a user too
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/system", timeout=1, auth=auth).raise_for_status()
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise ApplianceError(f"Orthanc did not start; see {storage / 'orthanc.log'}") from None
            time.sleep(0.1)
    try:
        _wait_for_port(int(config["DicomPort"]), timeout, lambda: process.poll() is None)
    except ApplianceError:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server process; kill it if it has not ended within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class SrArrival:
    """One SR seen in the PACS: its SOP Instance UID, where it is, and when the demo first saw it."""

    sop_instance_uid: str
    location: str
    seen_at: float


class LocalPacs(Protocol):
    """What the demo needs from its PACS."""

    kind: str
    ae_title: str
    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def find_sr(self, study_uid: str) -> list[SrArrival]: ...


class OrthancPacs:
    """Orthanc with a generated JSON configuration, DICOM and HTTP on free loopback ports."""

    kind = "Orthanc"

    def __init__(self, storage: Path, executable: Path = ORTHANC, ae_title: str = PACS_AE_TITLE) -> None:
        self.storage, self.executable, self.ae_title = storage, executable, ae_title
        self.port = free_port()
        self.http_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._seen: dict[str, float] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        if self._process is not None:
            return
        shutil.rmtree(self.storage, ignore_errors=True)  # a fresh PACS every run
        config = orthanc_config("DemoPACS", self.storage / "db", self.ae_title, self.port, self.http_port)
        self._process = launch_orthanc(self.executable, config, self.storage)
        logger.info("Orthanc %s on DICOM port %d, REST %s", self.ae_title, self.port, self.url)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)

    def find_sr(self, study_uid: str) -> list[SrArrival]:
        """SR instances of the study indexed by Orthanc (REST ``/tools/find``)."""
        import httpx

        query = {"Level": "Instance", "Expand": True, "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}
        try:
            found = httpx.post(f"{self.url}/tools/find", json=query, timeout=10).raise_for_status().json()
        except httpx.HTTPError as exc:
            logger.warning("Orthanc /tools/find failed: %s", exc)
            return []
        now = time.time()
        out = []
        for item in found:
            uid = str(item.get("MainDicomTags", {}).get("SOPInstanceUID", item.get("ID", "")))
            seen = self._seen.setdefault(uid, now)
            out.append(SrArrival(uid, f"Orthanc {self.url}/instances/{item.get('ID', '')}", seen))
        return out


class StoreScpPacs:
    """The node's own :class:`~dicom_node.scp.StorageSCP` as the fallback PACS: instances durable under ``storage``.

    Only ``calling_ae`` (the appliance's AE title) from 127.0.0.1 may associate, as a
    PACS would allow only the peers it knows.
    """

    kind = "storage SCP"

    def __init__(self, storage: Path, ae_title: str = PACS_AE_TITLE, calling_ae: str = APPLIANCE_AE_TITLE) -> None:
        self.storage, self.ae_title, self.calling_ae = storage, ae_title, calling_ae
        self.port = free_port()
        self._scp: StorageSCP | None = None
        self._sink = _ReceivedInstances()

    def start(self) -> None:
        if self._scp is not None:
            return
        shutil.rmtree(self.storage, ignore_errors=True)
        policy = AccessPolicy(self.ae_title, [Peer(self.calling_ae, "127.0.0.1")])
        self._scp = StorageSCP(self.ae_title, "127.0.0.1", self.port, Spool(self.storage), self._sink, policy)
        self._scp.start()
        logger.info("storage SCP %s on 127.0.0.1:%d", self.ae_title, self.port)

    def stop(self) -> None:
        scp, self._scp = self._scp, None
        if scp is not None:
            scp.stop()

    def find_sr(self, study_uid: str) -> list[SrArrival]:
        return self._sink.find_sr(study_uid)


class _ReceivedInstances:
    """The fallback PACS's index: each committed instance's study, modality, path and arrival time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: dict[str, tuple[InstanceRecord, float]] = {}

    def commit(self, records: Sequence[InstanceRecord]) -> None:
        """Index the records (the :class:`~dicom_node.scp.InstanceSink` contract: a UID is stored once)."""
        now = time.time()
        with self._lock:
            for record in records:
                known = self._received.get(record.sop_instance_uid)
                if known is not None and (known[0].study_uid, known[0].series_uid) != (record.study_uid,
                                                                                         record.series_uid):
                    raise DuplicateInstance("SOP Instance UID stored already under another study or series")
                self._received.setdefault(record.sop_instance_uid, (record, now))

    def find_sr(self, study_uid: str) -> list[SrArrival]:
        with self._lock:
            return [SrArrival(uid, str(record.path), at) for uid, (record, at) in self._received.items()
                    if record.study_uid == study_uid and record.modality == "SR"]


def start_pacs(storage: Path, prefer_orthanc: bool = True, calling_ae: str = APPLIANCE_AE_TITLE) -> LocalPacs:
    """Orthanc when installed (and ``prefer_orthanc``), else the storage SCP accepting ``calling_ae``; started."""
    pacs: LocalPacs
    if prefer_orthanc and ORTHANC.is_file() and os.access(ORTHANC, os.X_OK):
        pacs = OrthancPacs(storage / "orthanc")
    else:
        pacs = StoreScpPacs(storage / "storescp", calling_ae=calling_ae)
    pacs.start()
    return pacs
