"""The demo's PACS: Orthanc on free loopback ports when installed, else a small storage SCP.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import ApplianceError

__all__ = [
    "ORTHANC", "LocalPacs", "OrthancPacs", "SrArrival", "StoreScpPacs", "free_port", "launch_orthanc", "start_pacs",
    "stop_process",
]

logger = logging.getLogger(__name__)

ORTHANC = Path("/usr/sbin/Orthanc")
PACS_AE_TITLE = "DEMO-PACS"
_START_TIMEOUT = 60.0
_SUCCESS = 0x0000  #: C-STORE Success (PS3.4 Table B.2-1)


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
    """A pynetdicom storage SCP writing every instance it receives under ``storage`` (fallback PACS)."""

    kind = "storage SCP"

    def __init__(self, storage: Path, ae_title: str = PACS_AE_TITLE) -> None:
        self.storage, self.ae_title = storage, ae_title
        self.port = free_port()
        self._server: object | None = None
        self._lock = threading.Lock()
        self._received: list[tuple[str, str, str, Path, float]] = []  # study, modality, sop uid, path, at

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        shutil.rmtree(self.storage, ignore_errors=True)
        self.storage.mkdir(parents=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        logger.info("storage SCP %s on 127.0.0.1:%d", self.ae_title, self.port)

    def _on_store(self, event: object) -> int:
        ds = event.dataset  # type: ignore[attr-defined]
        ds.file_meta = event.file_meta  # type: ignore[attr-defined]
        uid = str(ds.SOPInstanceUID)
        path = self.storage / f"{uid}.dcm"
        tmp = path.with_name(f".{path.name}.tmp")
        ds.save_as(tmp, enforce_file_format=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        with self._lock:
            self._received.append((str(ds.StudyInstanceUID), str(ds.get("Modality", "")), uid, path, time.time()))
        return _SUCCESS

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]

    def find_sr(self, study_uid: str) -> list[SrArrival]:
        with self._lock:
            return [SrArrival(uid, str(path), at) for study, modality, uid, path, at in self._received
                    if study == study_uid and modality == "SR"]


def start_pacs(storage: Path, prefer_orthanc: bool = True) -> LocalPacs:
    """Orthanc when installed (and ``prefer_orthanc``), else the storage SCP; started."""
    pacs: LocalPacs
    if prefer_orthanc and ORTHANC.is_file() and os.access(ORTHANC, os.X_OK):
        pacs = OrthancPacs(storage / "orthanc")
    else:
        pacs = StoreScpPacs(storage / "storescp")
    pacs.start()
    return pacs
