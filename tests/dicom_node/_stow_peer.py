"""Orthanc with its DICOMweb plugin as a STOW-RS sender, and a small STOW-RS client for the bad requests.

Orthanc (1.10's plugin) posts ``{Url}studies`` with ``Transfer-Encoding: chunked``
and the ``Authorization`` header of its ``DicomWeb.Servers`` entry.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from appliance.demo._pacs import free_port, launch_orthanc, orthanc_config
from tests.peers import ORTHANC, Orthanc

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SERVER = "appliance"


@contextmanager
def orthanc_stow_sender(storage: Path, appliance_url: str, token: str) -> Iterator[Orthanc]:
    """Orthanc on free loopback ports with a DICOMweb server entry ``appliance`` pointing at ``appliance_url``."""
    orthanc = Orthanc(aet="ORTHANC", dicom_port=free_port(), http_port=free_port(), storage=storage)
    config = {
        **orthanc_config("StowSender", storage / "db", orthanc.aet, orthanc.dicom_port, orthanc.http_port),
        "HttpTimeout": 60,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {SERVER: {"Url": appliance_url.rstrip("/") + "/",
                                 "HttpHeaders": {"Authorization": f"Bearer {token}"}}},
        },
    }
    orthanc.process = launch_orthanc(ORTHANC, config, storage)
    try:
        yield orthanc
    finally:
        orthanc.stop()


def upload(orthanc: Orthanc, paths: Sequence[Path]) -> str:
    """Store files in Orthanc over REST; return the Orthanc id of their (single) study."""
    studies = set()
    with orthanc.rest() as client:
        for path in paths:
            answer = client.post("/instances", content=path.read_bytes()).raise_for_status().json()
            studies.add(answer["ParentStudy"])
    assert len(studies) == 1, studies
    return studies.pop()


def push_study(orthanc: Orthanc, study_id: str) -> httpx.Response:
    """Ask Orthanc to send the study to the appliance by STOW-RS (synchronously)."""
    with httpx.Client(base_url=orthanc.url, timeout=300) as client:
        return client.post(f"/dicom-web/servers/{SERVER}/stow", json={"Resources": [study_id]})


def multipart(parts: Sequence[bytes], boundary: str = "") -> tuple[bytes, str]:
    """A ``multipart/related; type="application/dicom"`` body of ``parts`` and its Content-Type."""
    boundary = boundary or uuid.uuid4().hex
    body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), part)
                    for part in parts)
    body += b"--%s--\r\n" % boundary.encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def post(url: str, parts: Sequence[bytes], token: str | None, content_type: str = "") -> httpx.Response:
    """POST ``parts`` as one STOW-RS request, chunked (no Content-Length), as Orthanc sends it."""
    body, default_type = multipart(parts)
    headers = {"Content-Type": content_type or default_type, "Accept": "application/dicom+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    return httpx.post(url, content=chunks(), headers=headers, timeout=120)


def post_and_drop(host: str, port: int, path: str, body: bytes, content_type: str, token: str, send: int) -> None:
    """Send a request announcing ``body`` whole, but only its first ``send`` bytes; then drop the connection."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head + body[:send])
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        try:
            while sock.recv(65536):  # until the server closes its side
                pass
        except OSError:
            pass
