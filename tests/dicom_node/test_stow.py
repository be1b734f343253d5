"""The STOW-RS listener against real requests: statuses, responses, and what is (not) stored."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from appliance.ingest import StoreSink
from appliance.state import StateStore
from dicom_node._multipart import MultipartError, MultipartReader
from dicom_node.spool import Spool
from dicom_node.store import INGEST_COUNTS, StoreStatus
from dicom_node.stow import StowClient, StowError, StowLimits, StowServer
from dicom_node.tls import client_context
from tests.dicom_node._large import data_set_digest, write_large_instance
from tests.dicom_node._stow_peer import multipart, post, post_and_drop
from tests.dicom_node.test_tls import _issue
from tests.peers import write_mr_instances

TOKEN = "router-token-0123456789"
REFERENCED, FAILED, REASON, INSTANCE = "00081199", "00081198", "00081197", "00081155"


@dataclass
class Listener:
    server: StowServer
    store: StateStore
    spool: Spool

    @property
    def url(self) -> str:
        return self.server.url + "/studies"

    def rows(self) -> dict[str, str]:
        rows = self.store.query("select sop_instance_uid, path from instances")
        return {r["sop_instance_uid"]: r["path"] for r in rows}

    def files(self) -> list[Path]:
        return [p for p in self.spool.root.rglob("*") if p.is_file()]


@contextmanager
def listening(data_dir: Path, min_free_bytes: int = 0, limits: StowLimits = StowLimits()) -> Iterator[Listener]:
    store = StateStore.for_data_dir(data_dir)
    spool = Spool(data_dir / "spool", min_free_bytes)
    server = StowServer("127.0.0.1", 0, spool, StoreSink(store), [StowClient("router", TOKEN)], limits=limits)
    server.start()
    try:
        yield Listener(server, store, spool)
    finally:
        server.stop()
        store.close()


@pytest.fixture()
def listener(tmp_path: Path) -> Iterator[Listener]:
    with listening(tmp_path / "var") as running:
        yield running


def _uids(answer: dict, sequence: str) -> list[str]:
    return [item.get(INSTANCE, {}).get("Value", [""])[0] for item in answer.get(sequence, {}).get("Value", [])]


def _reasons(answer: dict) -> list[int]:
    return [item[REASON]["Value"][0] for item in answer.get(FAILED, {}).get("Value", [])]


def test_instances_are_stored_byte_identical_and_listed(listener: Listener, tmp_path: Path) -> None:
    paths = write_mr_instances(tmp_path / "mr", 5)
    before = INGEST_COUNTS.snapshot().get(("stowrs", "stored"), 0)
    answer = post(listener.url, [p.read_bytes() for p in paths], TOKEN)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    sent = {p.stem: p for p in paths}
    assert sorted(_uids(answer.json(), REFERENCED)) == sorted(sent)
    rows = listener.rows()
    assert set(rows) == set(sent)
    for uid, path in rows.items():
        assert data_set_digest(Path(path)) == data_set_digest(sent[uid])
        assert pydicom.dcmread(path).file_meta.SourceApplicationEntityTitle == "router"
    assert INGEST_COUNTS.snapshot()[("stowrs", "stored")] == before + 5
    again = post(listener.url + "/" + pydicom.dcmread(paths[0]).StudyInstanceUID, [paths[0].read_bytes()], TOKEN)
    assert again.status_code == 200, again.text  # a re-send is success, stored once
    assert len(listener.rows()) == 5 and len(listener.files()) == 5


@pytest.mark.parametrize("token", [None, "not-the-token-at-all"])
def test_a_request_without_a_known_token_is_refused_unread(
    listener: Listener, tmp_path: Path, token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    paths = write_mr_instances(tmp_path / "mr", 1)
    answer = post(listener.url, [paths[0].read_bytes()], token)
    assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")
    assert not listener.rows() and not listener.files()
    assert "no or unknown bearer token" in caplog.text
    for _ in range(3):  # a client hammering with a bad token does not flood the log
        assert post(listener.url, [b"x"], token).status_code == 401
    assert caplog.text.count("no or unknown bearer token") == 1
    assert (token or TOKEN) not in caplog.text and paths[0].stem not in caplog.text


def test_bad_parts_are_failed_with_their_reason_and_store_nothing(listener: Listener, tmp_path: Path) -> None:
    paths = write_mr_instances(tmp_path / "mr", 2)
    good = paths[0].read_bytes()
    truncated = paths[1].read_bytes()[:-1000]
    answer = post(listener.url, [b"this is not DICOM at all" * 10, truncated, good], TOKEN)
    assert answer.status_code == 202, answer.text  # some stored, some failed
    body = answer.json()
    assert _uids(body, REFERENCED) == [paths[0].stem]
    assert _reasons(body) == [StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CANNOT_UNDERSTAND]
    assert _uids(body, FAILED) == ["", paths[1].stem]  # the non-DICOM part has no UID to name
    assert set(listener.rows()) == {paths[0].stem} and len(listener.files()) == 1

    all_bad = post(listener.url, [truncated], TOKEN)
    assert all_bad.status_code == 409 and _reasons(all_bad.json()) == [StoreStatus.CANNOT_UNDERSTAND]
    assert len(listener.files()) == 1


def test_study_uid_mismatch_is_a900(listener: Listener, tmp_path: Path) -> None:
    paths = write_mr_instances(tmp_path / "mr", 1)
    answer = post(f"{listener.url}/{generate_uid()}", [paths[0].read_bytes()], TOKEN)
    assert answer.status_code == 409, answer.text
    assert _reasons(answer.json()) == [0xA900] and _uids(answer.json(), FAILED) == [paths[0].stem]
    assert not listener.rows() and not listener.files()
    invalid = post(f"{listener.url}/1.02.3", [paths[0].read_bytes()], TOKEN)
    assert invalid.status_code == 400 and "not a valid UID" in invalid.text


def test_low_free_space_is_a700(tmp_path: Path) -> None:
    paths = write_mr_instances(tmp_path / "mr", 2)
    with listening(tmp_path / "var", min_free_bytes=1 << 60) as full:
        answer = post(full.url, [p.read_bytes() for p in paths], TOKEN)
        assert answer.status_code == 409, answer.text
        assert _reasons(answer.json()) == [StoreStatus.OUT_OF_RESOURCES] * 2
        assert not full.rows() and not full.files()


def test_media_type_and_size_refusals(tmp_path: Path) -> None:
    paths = write_mr_instances(tmp_path / "mr", 1)
    data = paths[0].read_bytes()
    with listening(tmp_path / "var", limits=StowLimits(max_request_bytes=len(data) + 4096)) as small:
        wrong = post(small.url, [data], TOKEN, content_type='multipart/related; type="application/dicom+json"; b=x')
        assert wrong.status_code == 415 and "application/dicom" in wrong.text
        assert post(small.url, [data], TOKEN, content_type="application/dicom").status_code == 415
        no_boundary = post(small.url, [data], TOKEN, content_type='multipart/related; type="application/dicom"')
        assert no_boundary.status_code == 400 and "boundary" in no_boundary.text
        body, content_type = multipart([data, data])
        announced = httpx.post(small.url, content=body, timeout=30,  # Content-Length: refused unread
                               headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"})
        assert announced.status_code == 413 and "exceeds" in announced.text
        assert not small.files()
        too_large = post(small.url, [data, data], TOKEN)  # chunked: refused as the body passes the limit
        assert too_large.status_code == 413, too_large.text
        assert post(small.url, [], TOKEN).status_code == 400
        assert not small.files() or {p.stem for p in small.files()} <= {paths[0].stem}


def test_a_body_cut_off_mid_upload_leaves_nothing(
    listener: Listener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    large = write_large_instance(tmp_path / "large.dcm", 8 << 20)
    body, content_type = multipart([large.read_bytes()])
    server = listener.server
    post_and_drop("127.0.0.1", server.port, "/dicomweb/studies", body, content_type, TOKEN, send=len(body) // 2)
    deadline = time.monotonic() + 30
    while "connection dropped mid-body" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    assert not listener.rows() and not listener.files(), "a partial instance remains"


def test_a_large_instance_streams_to_the_spool(listener: Listener, tmp_path: Path) -> None:
    large = write_large_instance(tmp_path / "large.dcm", 40 << 20, sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.6")
    answer = post(listener.url, [large.read_bytes()], TOKEN)
    assert answer.status_code == 200, answer.text
    (path,) = listener.rows().values()
    assert data_set_digest(Path(path)) == data_set_digest(large)


def test_the_listener_requires_a_client_unless_told_otherwise(tmp_path: Path) -> None:
    store = StateStore.for_data_dir(tmp_path)
    try:
        with pytest.raises(StowError, match="no client is configured"):
            StowServer("127.0.0.1", 0, Spool(tmp_path / "spool"), StoreSink(store), [])
    finally:
        store.close()


def test_the_multipart_reader_finds_delimiters_split_across_chunks() -> None:
    parts: list[bytearray] = []
    reader = MultipartReader("b0undary", lambda headers: parts.append(bytearray()),
                             lambda data: parts[-1].extend(data), lambda: None)
    payloads = [b"first\r\n--b0undar", b"", b"x" * 5000]
    body, _ = multipart(payloads, boundary="b0undary")
    for start in range(0, len(body), 7):
        reader.feed(body[start : start + 7])
    reader.close()
    assert [bytes(p) for p in parts] == payloads
    cut = MultipartReader("b0undary", lambda headers: None, lambda data: None, lambda: None)
    cut.feed(body[:-10])
    with pytest.raises(MultipartError, match="before its close delimiter"):
        cut.close()
    with pytest.raises(MultipartError, match="boundary"):
        MultipartReader("", lambda headers: None, lambda data: None, lambda: None)


def test_unsupported_sop_class_is_refused(listener: Listener, tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5"
    path = tmp_path / "odd.dcm"
    ds.save_as(path, enforce_file_format=True)
    answer = post(listener.url, [path.read_bytes()], TOKEN)
    assert answer.status_code == 409 and _reasons(answer.json()) == [StoreStatus.SOP_CLASS_NOT_SUPPORTED]
    assert not listener.files()



@pytest.mark.parametrize(("client", "accepted"), [("client", True), ("stranger", False)])
def test_mutual_tls(tmp_path: Path, client: str, accepted: bool) -> None:
    certs = tmp_path / "pki"
    certs.mkdir()
    ca = _issue("ca", None, certs)
    _issue("server", ca, certs)
    _issue("client", ca, certs)
    _issue("stranger", _issue("otherca", None, certs), certs)
    store = StateStore.for_data_dir(tmp_path / "var")
    server = StowServer("localhost", 0, Spool(tmp_path / "var" / "spool"), StoreSink(store),
                        [StowClient("router", TOKEN)],
                        tls=(str(certs / "server.crt"), str(certs / "server.key"), str(certs / "ca.crt")))
    server.start()
    try:
        assert server.url.startswith("https://localhost:")
        context = client_context(certs / "ca.crt", certs / f"{client}.crt", certs / f"{client}.key")
        body, content_type = multipart([write_mr_instances(tmp_path / "mr", 1)[0].read_bytes()])
        try:
            answer = httpx.post(server.url + "/studies", content=body, verify=context, timeout=30,
                                headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"})
            status = answer.status_code
        except (httpx.HTTPError, ssl.SSLError):
            status = 0
        assert (status == 200) is accepted, status
        assert len(list(server.store.spool.root.rglob("*.dcm"))) == (1 if accepted else 0)
    finally:
        server.stop()
        store.close()
