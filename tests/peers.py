"""Real DICOM peers for tests: dcmtk tools by absolute path and an Orthanc PACS on loopback.

Servers listen on ports chosen at run time and are stopped by the fixture that
started them. dcmtk and Orthanc are started with ``TCP_NODELAY=1`` so a C-STORE
does not wait on Nagle / delayed ACK.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import json
from typing import Any

import httpx

DCMTK = Path("/usr/bin")
STORESCU = DCMTK / "storescu"
STORESCP = DCMTK / "storescp"
ECHOSCU = DCMTK / "echoscu"
DSRDUMP = DCMTK / "dsrdump"
DCIODVFY = Path("/usr/bin/dciodvfy")
ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def peer_env() -> dict[str, str]:
    """Environment for dcmtk tools and Orthanc: TCP_NODELAY on."""
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server process; kill it if it has not ended within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def orthanc_config(name: str, database: Path, ae_title: str, dicom_port: int, http_port: int) -> dict[str, Any]:
    """An Orthanc configuration for a test PACS on loopback ports.

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


def launch_orthanc(executable: Path, config: dict[str, Any], storage: Path, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """Start Orthanc with ``config`` (written to ``storage/orthanc.json``; log beside it) and TCP_NODELAY.

    Returns once its REST API and its DICOM port answer; a process that exits or
    does not answer within ``timeout`` is stopped and reported naming its log.
    """
    storage.mkdir(parents=True, exist_ok=True)
    cfg = storage / "orthanc.json"
    cfg.write_text(json.dumps(config))
    with open(storage / "orthanc.log", "ab") as log:
        process = subprocess.Popen([str(executable), str(cfg)], stdout=log, stderr=log, env=peer_env())
    url = f"http://127.0.0.1:{config['HttpPort']}"
    users = (config.get("RegisteredUsers") or {}) if config.get("AuthenticationEnabled") else {}
    auth = next(iter(users.items()), None)  # with HTTP authentication on, /system needs a user too
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                httpx.get(f"{url}/system", timeout=1, auth=auth).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start; see {storage / 'orthanc.log'}") from None
                time.sleep(0.1)
        wait_for_port(int(config["DicomPort"]), max(deadline - time.monotonic(), 1.0))
    except BaseException:
        stop_process(process)
        raise
    return process


def dciodvfy(path: Path) -> tuple[list[str], str]:
    """Run dicom3tools' dciodvfy; return (error lines, whole output)."""
    proc = subprocess.run([str(DCIODVFY), "-new", str(path)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    return errors, output


@dataclass
class Orthanc:
    """A running Orthanc: its DICOM endpoint and REST base URL.

    ``dicomweb`` loads the DICOMweb plugin (``/dicom-web/``); ``users`` turns on HTTP basic
    authentication with these ``{user: password}``; ``extra`` is merged into the JSON configuration.
    """

    aet: str
    dicom_port: int
    http_port: int
    storage: Path
    process: subprocess.Popen[bytes] | None = None
    dicomweb: bool = False
    users: dict[str, str] | None = None
    extra: dict[str, object] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb plugin's base URL (QIDO-RS, WADO-RS, STOW-RS under it)."""
        return f"{self.url}/dicom-web"

    def rest(self) -> httpx.Client:
        auth = next(iter(self.users.items())) if self.users else None
        return httpx.Client(base_url=self.url, timeout=30, auth=auth)

    def instances(self) -> list[str]:
        with self.rest() as client:
            return list(client.get("/instances").raise_for_status().json())

    def find_sr(self, study_uid: str) -> list[dict[str, object]]:
        """Instances of Modality SR in the study, through /tools/find."""
        query = {"Level": "Instance", "Expand": True, "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}
        with self.rest() as client:
            return list(client.post("/tools/find", json=query).raise_for_status().json())

    def start(self) -> None:
        """Start (or start again, on the same ports and database) and wait until it answers."""
        if self.process is not None:
            return
        config = {**orthanc_config("TestPACS", self.storage / "db", self.aet, self.dicom_port, self.http_port),
                  "HttpTimeout": 30}
        if self.dicomweb:
            config["Plugins"] = [str(require_tool(ORTHANC_DICOMWEB))]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        if self.users:
            config.update(AuthenticationEnabled=True, RegisteredUsers=dict(self.users))
        config.update(self.extra or {})
        self.process = launch_orthanc(ORTHANC, config, self.storage)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@contextmanager
def running_orthanc(
    storage: Path,
    aet: str = "ORTHANC",
    *,
    dicomweb: bool = False,
    users: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc on free loopback ports, yield it, stop it (options: see :class:`Orthanc`)."""
    orthanc = Orthanc(aet=aet, dicom_port=free_port(), http_port=free_port(), storage=storage,
                      dicomweb=dicomweb, users=users, extra=extra)
    orthanc.start()
    try:
        yield orthanc
    finally:
        orthanc.stop()


@contextmanager
def running_storescp(directory: Path, aet: str = "STORESCP") -> Iterator[int]:
    """Start dcmtk storescp on a free loopback port writing into ``directory``; yield the port."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(STORESCP), "--aetitle", aet, "--output-directory", str(directory), "--accept-all", str(port)],
        env=peer_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        stop_process(proc)


def require_tool(path: Path) -> Path:
    """The absolute path of a required external tool; fail loudly when it is missing."""
    if not path.exists() and shutil.which(path.name) is None:
        raise RuntimeError(f"{path} is missing: run scripts/test.sh, which installs dcmtk, orthanc and dicom3tools")
    return path


def write_mr_instances(directory: Path, count: int, *, study_each: bool = False) -> list[Path]:
    """``count`` MR instances (~10 KB each, from pydicom's MR_small.dcm) with new UIDs, named by SOP Instance UID.

    All of one new series, or with ``study_each`` each in a study and series of its own.
    """
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    paths = []
    for _ in range(count):
        if study_each:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
