"""The dashboard served by the real web component over HTTP: no PHI, token-guarded changes, metrics."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from appliance.config import Config, parse_config
from appliance.jobs import JobQueue
from appliance.state import StateStore
from appliance.web import WebServer, create_app
from appliance.web._guard import SECURITY_HEADERS
from tests.appliance._spooled import ACCESSION, PATIENT_ID, PATIENT_NAME, spool_instance
from tests.engines._helpers import keypair, make_bundle
from tests.peers import free_port, wait_for_port

TOKEN = "s3cret-token"
PAGES = ("/", "/engines", "/metrics", "/healthz", "/api/status")


def _config(data_dir: Path, **web: Any) -> Config:
    return parse_config(
        {
            "node": {"data_dir": str(data_dir), "min_free_bytes": 1},
            "destinations": [{"name": "pacs", "ae_title": "ORTHANC", "port": 4242}],
            "web": {"port": 0, **web},
            "worker": {"max_queue": 2},
        }
    )


@pytest.fixture
def site(data_dir: Path) -> Iterator[dict[str, Any]]:
    """A store with instances carrying a patient name, jobs in every state, deliveries; a running server."""
    config = _config(data_dir, token=TOKEN)
    store = StateStore.for_data_dir(data_dir)
    study, series = generate_uid(), generate_uid()
    for _ in range(3):
        spool_instance(store, data_dir, study, series, modality="SM", description="slide")
    queue = JobQueue(store)
    done, _ = queue.enqueue("pathology", study, [series])
    queue.lease("w")
    queue.progress(done, "w", 40, 40)
    queue.succeed(done, "w", {"findings": [{"probability": 0.8125, "positive": True, "engine": "pathology_slide@1.0.0",
                                            "demo": True}], "objects": ["a.dcm"], "tiles_scored": 40,
                              "seconds": {"pipeline": 2.0}})
    running, _ = queue.enqueue("breast_mri", study, [series])
    queue.lease("w")
    queue.progress(running, "w", 7, 20)
    failed, _ = queue.enqueue("pathology", study, [generate_uid()])
    queue.lease("w")
    queue.fail(failed, "w", "slide has no tissue")
    queue.enqueue("pathology", study, [generate_uid()])
    queue.enqueue("pathology", study, [generate_uid()], priority=0)
    broken = generate_uid()  # a series whose header could not be read: failed with a reason naming its instance
    spool_instance(store, data_dir, study, broken, modality="MR", description="dyn")
    store.series.fail(broken, f"routing failed: RecursionError in {broken}")
    now = time.time()
    with store.atomic() as db:
        db["deliveries"].insert_all(
            [
                {"job_id": done, "destination": "pacs", "path": "x", "sop_instance_uid": "1.2.3.1", "state": "delivered",
                 "attempts": 1, "next_attempt_at": 0, "created_at": now - 0.3, "delivered_at": now, "last_error": ""},
                {"job_id": done, "destination": "pacs", "path": "y", "sop_instance_uid": "1.2.3.2", "state": "pending",
                 "attempts": 2, "next_attempt_at": now + 5, "created_at": now, "delivered_at": 0,
                 "last_error": "association rejected by ORTHANC"},
            ]
        )
    server = WebServer(create_app(config, store), "127.0.0.1", 0)
    server.start()
    try:
        yield {"config": config, "store": store, "server": server, "study": study, "series": series,
               "jobs": {"done": done, "running": running, "failed": failed}, "data_dir": data_dir}
    finally:
        server.stop()
        server.stop()


def _get(site: dict[str, Any], path: str) -> httpx.Response:
    return httpx.get(site["server"].url + path, timeout=10)


def test_pages_show_state_without_phi(site: dict[str, Any]) -> None:
    texts = {}
    for page in PAGES:
        response = _get(site, page)
        assert response.status_code == 200, page
        texts[page] = response.text
    forbidden = [PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID, ACCESSION, site["study"], site["series"]]
    for page, text in texts.items():
        for secret in forbidden:
            assert secret not in text, f"{secret!r} shown on {page}"
    home = texts["/"]
    jobs = site["jobs"]
    assert jobs["running"] in home and 'value="7" max="20"' in home
    assert jobs["done"] in home and "0.812" in home and "positive" in home
    assert "slide has no tissue" in home
    assert "routing failed: RecursionError in &lt;UID&gt;" in home  # issue 15 finding 5: the reason, no UID
    assert "association rejected by ORTHANC" in home and "ORTHANC@127.0.0.1:4242" in home
    assert "Queue depth 2 of 2" in home and "the job queue is at its limit" in home
    assert json.loads(texts["/api/status"])["jobs"] == {"queued": 2, "running": 1, "succeeded": 1, "failed": 1}


def test_metrics_parse(site: dict[str, Any]) -> None:
    response = _get(site, "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("appliance_instances_received_total", ())] == 4
    assert samples[("appliance_jobs", (("state", "queued"),))] == 2
    assert samples[("appliance_jobs", (("state", "failed"),))] == 1
    assert samples[("appliance_job_duration_seconds_count", (("pipeline", "pathology"),))] == 1
    assert samples[("appliance_tiles_per_second", ())] == 20.0
    assert samples[("appliance_delivery_latency_seconds_bucket", (("destination", "pacs"), ("le", "0.5")))] == 1
    assert samples[("appliance_delivery_latency_seconds_bucket", (("destination", "pacs"), ("le", "0.1")))] == 0
    assert samples[("appliance_deliveries", (("destination", "pacs"), ("state", "dead")))] == 0
    assert samples[("appliance_failures_total", (("kind", "job"),))] == 1
    assert samples[("appliance_failures_total", (("kind", "series"),))] == 1
    assert samples[("appliance_backpressure", ())] == 1
    assert PATIENT_NAME not in response.text


@pytest.mark.parametrize(
    ("headers", "form", "status"),
    [
        ({}, "task=test_task&version=1.0.0", 401),
        ({"Authorization": "Bearer wrong"}, "task=test_task&version=1.0.0", 401),
        ({}, "task=test_task&version=1.0.0&token=wrong", 401),
        ({"Authorization": f"Bearer {TOKEN}"}, "task=test_task&version=9.9.9", 400),  # authorised; no such version
        ({}, f"task=test_task&version=9.9.9&token={TOKEN}", 400),
    ],
)
def test_changes_need_the_token(site: dict[str, Any], headers: dict[str, str], form: str, status: int) -> None:
    response = httpx.post(
        site["server"].url + "/engines/activate", content=form, timeout=10,
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    assert response.status_code == status, response.text
    if status == 401:
        assert "valid token is required" in response.text


def test_install_activate_rollback_through_the_web(site: dict[str, Any], tmp_path: Path) -> None:
    pem = keypair(site["config"].trusted_keys_dir, "vendor")
    first = make_bundle(tmp_path / "b1", pem, version="1.0.0")
    second = make_bundle(tmp_path / "b2", pem, version="1.1.0")
    url = site["server"].url
    auth = {"Authorization": f"Bearer {TOKEN}"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = httpx.post(url + "/engines/install", content=f"bundle_path={first}&token={TOKEN}", headers=form, timeout=60)
    assert r.status_code == 303 and "installed" in r.headers["location"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(second, arcname="bundle")
    r = httpx.post(url + "/engines/install", content=buffer.getvalue(), timeout=60,
                   headers={**auth, "Content-Type": "application/x-tar"})
    assert r.status_code == 200 and r.json()["version"] == "1.1.0", r.text
    for version in ("1.0.0", "1.1.0"):
        r = httpx.post(url + "/engines/activate", content=f"task=test_task&version={version}", timeout=30,
                       headers={**auth, **form})
        assert r.status_code == 200, r.text
    assert "test_task" in _get(site, "/").text and "1.1.0" in _get(site, "/").text
    r = httpx.post(url + "/engines/rollback", content="task=test_task", headers={**auth, **form}, timeout=30)
    assert r.status_code == 200 and r.json()["version"] == "1.0.0"
    assert json.loads(_get(site, "/api/status").text)["engines"] == {"test_task": "1.0.0"}
    audit = site["store"].query("select actor, action from audit")
    assert any(row["actor"].startswith("web:") for row in audit)


def test_changes_refused_without_configured_token(data_dir: Path) -> None:
    config = _config(data_dir)
    server = WebServer(create_app(config, StateStore.for_data_dir(data_dir)), "127.0.0.1", 0)
    server.start()
    try:
        r = httpx.post(server.url + "/engines/rollback", content="task=x&token=", timeout=10,
                       headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer anything"})
        assert r.status_code == 403 and "no [web] token" in r.text
        assert "Changes are disabled" in httpx.get(server.url + "/engines", timeout=10).text
    finally:
        server.stop()


def test_healthz_fails_when_disk_is_below_limit(data_dir: Path) -> None:
    config = parse_config({"node": {"data_dir": str(data_dir), "min_free_bytes": 2**62}})
    server = WebServer(create_app(config, StateStore.for_data_dir(data_dir), {"node": lambda: True}), "127.0.0.1", 0)
    server.start()
    try:
        r = httpx.get(server.url + "/healthz", timeout=10)
        assert r.status_code == 503 and r.json()["checks"] == {"state_store": True, "disk": False, "node": True}
        assert "free disk is below the limit" in httpx.get(server.url + "/", timeout=10).text
    finally:
        server.stop()


# --------------------------------------------------------------------------- hardening (issue 15)

DECLARED = 512 * 1024**2  # the body a hostile client announces
UPLOAD_CAP = 4 * 1024**2
MAX_CONNECTIONS = 16
HEADER_TIMEOUT = 2.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from appliance.cli import main; main()", *args]


def _rss_kb(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak resident) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``appliance serve`` in its own process, as an operator starts it, with a token and a small upload cap."""
    root = tmp_path_factory.mktemp("serve")
    data_dir, web_port, node_port = root / "var", free_port(), free_port()
    cfg = root / "appliance.toml"
    cfg.write_text(f'[node]\ndata_dir = "{data_dir}"\nport = {node_port}\nmin_free_bytes = 1\n'
                   f'[web]\nport = {web_port}\ntoken = "{TOKEN}"\nmax_upload_bytes = {UPLOAD_CAP}\n'
                   f'max_connections = {MAX_CONNECTIONS}\nheader_timeout_seconds = {HEADER_TIMEOUT}\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(_cli("serve", "--config", str(cfg)), cwd=root, env=env, stdout=log, stderr=log)
    try:
        wait_for_port(web_port, timeout=60)
        yield {"pid": proc.pid, "url": f"http://127.0.0.1:{web_port}", "port": web_port, "data_dir": data_dir}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _hostile_post(port: int, path: str, content_type: str, extra: str = "") -> tuple[str, int]:
    """POST announcing a 512 MB body; send 64 KB, read the answer, then try to push the rest.

    Returns the status line and how many body bytes the server let through before
    it closed the connection (or stopped reading).
    """
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {DECLARED}\r\n{extra}\r\n").encode()
    chunk = b"a" * (64 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head + chunk)
        answer = sock.recv(4096).decode("latin-1")  # the server answers with 63.9 MB... still unsent
        pushed = len(chunk)
        sock.settimeout(5)
        try:
            while pushed < DECLARED:
                pushed += sock.send(chunk * 16)
        except OSError:  # reset, broken pipe, or a timeout: the server is not reading
            pass
    return answer.split("\r\n", 1)[0], pushed


def test_unauthenticated_512mb_posts_are_refused_unread(served: dict[str, Any]) -> None:
    """Finding 6: four 512 MB POSTs without a token at once; 401 from the headers, memory flat."""
    pid, port = served["pid"], served["port"]
    before = _rss_kb(pid, "VmRSS")
    attacks = [("/engines/install", "application/x-www-form-urlencoded", ""),
               ("/engines/install", "application/x-tar", ""),
               ("/engines/activate", "application/x-www-form-urlencoded", ""),
               ("/engines/install", "application/x-tar", "Authorization: Bearer wrong\r\n")]
    with ThreadPoolExecutor(len(attacks)) as pool:
        results = list(pool.map(lambda a: _hostile_post(port, *a), attacks))
        legit = httpx.get(served["url"] + "/healthz", timeout=15)  # served while the attack is on
    for (path, kind, _), (status, pushed) in zip(attacks, results, strict=True):
        assert status == "HTTP/1.1 401 Unauthorized", (path, kind, status)
        assert pushed < 64 * 1024**2, f"the server read {pushed} bytes of an unauthenticated body ({kind})"
    assert legit.status_code in (200, 503)
    growth_mb = (_rss_kb(pid, "VmHWM") - before) / 1024
    assert growth_mb < 300, f"resident memory grew {growth_mb:.0f} MB"
    assert not list((served["data_dir"] / "uploads").glob("*"))


def _chunked_upload(port: int, size: int) -> str:
    """An authenticated chunked upload of ``size`` bytes (no Content-Length); the status line."""
    head = (f"POST /engines/install HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        block = b"b" * (64 * 1024)
        sent = 0
        while sent < size:
            part = block[: size - sent]
            sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            sent += len(part)
        return sock.recv(4096).decode("latin-1").split("\r\n", 1)[0]


def test_oversized_authenticated_upload_gets_413_and_leaves_no_file(served: dict[str, Any]) -> None:
    status, _ = _hostile_post(served["port"], "/engines/install", "application/x-tar",
                              f"Authorization: Bearer {TOKEN}\r\n")
    assert status == "HTTP/1.1 413 Request Entity Too Large", status
    assert _chunked_upload(served["port"], UPLOAD_CAP + 10) == "HTTP/1.1 413 Request Entity Too Large"
    assert not list((served["data_dir"] / "uploads").glob("*")), "a refused upload left a file"
    staging = served["data_dir"] / "engines" / ".staging"
    assert not staging.exists() or not list(staging.iterdir())
    assert httpx.get(served["url"] + "/healthz", timeout=15).status_code in (200, 503)


def test_every_response_carries_security_headers(served: dict[str, Any]) -> None:
    url = served["url"]
    responses = [httpx.get(url + page, timeout=15) for page in (*PAGES, "/no-such-page")]
    responses.append(httpx.post(url + "/engines/rollback", content="task=x", timeout=15,
                                headers={"Content-Type": "application/x-www-form-urlencoded"}))
    assert [r.status_code for r in responses][-2:] == [404, 401]
    for r in responses:
        for name, value in SECURITY_HEADERS.items():
            assert r.headers.get(name) == value, (r.request.url, name, r.headers.get(name))
    assert "frame-ancestors 'none'" in SECURITY_HEADERS["Content-Security-Policy"]


def test_form_token_is_only_read_from_a_small_form(served: dict[str, Any]) -> None:
    url = served["url"] + "/engines/rollback"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    padded = f"task=test_task&token={TOKEN}&pad=" + "p" * (70 * 1024)
    r = httpx.post(url, content=padded, headers=form, timeout=15)
    assert r.status_code == 401 and "at most 65536 bytes" in r.text
    r = httpx.post(url, content=padded, headers={**form, "Authorization": f"Bearer {TOKEN}"}, timeout=15)
    assert r.status_code == 413 and "max_form_bytes" in r.text
    r = httpx.post(url, content=f"task=test_task&token={TOKEN}", headers=form, timeout=15)
    assert r.status_code == 400 and "no previous version" in r.text  # authorised by the form's token


def test_failure_reasons_on_the_dashboard_show_no_uid(data_dir: Path) -> None:
    """Finding 11: a failed job's reason quoting a SOP Instance UID is shown without it."""
    store = StateStore.for_data_dir(data_dir)
    sop_uid, study = generate_uid(), generate_uid()
    queue = JobQueue(store)
    job, _ = queue.enqueue("breast_mri", study, [generate_uid()])
    queue.lease("w")
    queue.fail(job, "w", f"instance {sop_uid} of SMITH^JANE cannot be read: 'uid {sop_uid}' (engine 1.2.0)")
    server = WebServer(create_app(_config(data_dir), store), "127.0.0.1", 0)
    server.start()
    try:
        page = httpx.get(server.url + "/", timeout=15).text
    finally:
        server.stop()
    assert job in page and "cannot be read" in page and "(engine 1.2.0)" in page
    assert sop_uid not in page and "SMITH" not in page and "<UID>" in page.replace("&lt;", "<").replace("&gt;", ">")


def test_downgrade_over_the_web_needs_allow_downgrade(site: dict[str, Any], tmp_path: Path) -> None:
    pem = keypair(site["config"].trusted_keys_dir, "vendor")
    url, auth = site["server"].url, {"Authorization": f"Bearer {TOKEN}"}
    form = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    newer, older = make_bundle(tmp_path / "b2", pem, version="2.0.0"), make_bundle(tmp_path / "b1", pem, version="1.0.0")
    assert httpx.post(url + "/engines/install", content=f"bundle_path={newer}", headers=form, timeout=60).status_code == 200
    r = httpx.post(url + "/engines/install", content=f"bundle_path={older}", headers=form, timeout=60)
    assert r.status_code == 400 and "older than test_task/2.0.0" in r.text and "allow_downgrade" in r.text
    r = httpx.post(url + "/engines/install", content=f"bundle_path={older}&allow_downgrade=1", headers=form, timeout=60)
    assert r.status_code == 200, r.text
    assert httpx.post(url + "/engines/activate", content="task=test_task&version=2.0.0", headers=form,
                      timeout=30).status_code == 200
    r = httpx.post(url + "/engines/activate", content="task=test_task&version=1.0.0", headers=form, timeout=30)
    assert r.status_code == 400 and "older than" in r.text
    assert 'name="allow_downgrade"' in httpx.get(url + "/engines", timeout=15).text
    r = httpx.post(url + "/engines/activate?allow_downgrade=yes", content="task=test_task&version=1.0.0",
                   headers=form, timeout=30)
    assert r.status_code == 200
    browser_form = {"Content-Type": "application/x-www-form-urlencoded"}  # the page's form: token as a field
    assert httpx.post(url + "/engines/activate", content=f"task=test_task&version=2.0.0&token={TOKEN}",
                      headers=browser_form, timeout=30).status_code == 303
    r = httpx.post(url + "/engines/activate", headers=browser_form, timeout=30,
                   content=f"task=test_task&version=1.0.0&token={TOKEN}&allow_downgrade=1")
    assert r.status_code == 303 and "activated" in r.headers["location"]
    rows = site["store"].query("select action, detail from audit where action in ('engine_install', 'engine_activate')")
    forced = [(row["action"], json.loads(row["detail"])) for row in rows if "downgrade_from" in row["detail"]]
    assert [(a, d["downgrade_from"]) for a, d in forced] == [
        ("engine_install", "2.0.0"), ("engine_activate", "2.0.0"), ("engine_activate", "2.0.0")]


def test_bundle_path_errors_do_not_list_other_entries(site: dict[str, Any], tmp_path: Path) -> None:
    pem = keypair(site["config"].trusted_keys_dir, "vendor")
    bundle = make_bundle(tmp_path / "b", pem)
    (bundle / "patient-SMITH-notes.txt").write_text("x")
    (bundle / "link").symlink_to("/etc/passwd")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "another-SMITH-file").write_text("x")
    form = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-www-form-urlencoded"}
    for path, reason in ((bundle, "has 2 entries its manifest does not list"), (elsewhere, "has no manifest.json"),
                         (Path("relative/x"), "absolute path"), (Path("/etc"), "")):
        r = httpx.post(site["server"].url + "/engines/install", content=f"bundle_path={path}", headers=form,
                       timeout=60)
        assert r.status_code == 400 and reason in r.text, r.text
        assert "SMITH" not in r.text and "passwd" not in r.text and "hostname" not in r.text, r.text


def test_uploaded_sparse_bundle_is_refused_writing_nothing(served: dict[str, Any], tmp_path: Path) -> None:
    """Finding 9 over HTTP: a ~10 KB tar whose sparse member claims 2 GiB; refused, nothing staged."""
    gnu_tar = Path("/usr/bin/tar")
    if not gnu_tar.is_file():
        pytest.skip(f"{gnu_tar} (GNU tar) is not installed")
    trusted = served["data_dir"] / "trusted_keys"
    bundle = make_bundle(tmp_path / "b", keypair(trusted, f"vendor{time.monotonic_ns()}"))
    with open(bundle / "model.onnx", "r+b") as model:
        model.truncate(2 * 1024**3)
    tar = tmp_path / "sparse.tar"
    subprocess.run([str(gnu_tar), "--sparse", "-cf", str(tar), "-C", str(bundle), "."], check=True)
    assert tar.stat().st_size < 64 * 1024
    r = httpx.post(served["url"] + "/engines/install", content=tar.read_bytes(), timeout=60,
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-tar"})
    assert r.status_code == 400 and "sparse file" in r.text and "2147483648" in r.text, r.text
    staging = served["data_dir"] / "engines" / ".staging"
    assert not list(staging.rglob("*")), "the refused bundle wrote into engines/.staging"
    assert not list((served["data_dir"] / "uploads").glob("*"))


def test_upload_that_would_fill_the_spool_disk_gets_507(data_dir: Path) -> None:
    config = parse_config({"node": {"data_dir": str(data_dir), "min_free_bytes": 2**62},
                           "web": {"port": 0, "token": TOKEN}})
    server = WebServer(create_app(config, StateStore.for_data_dir(data_dir)), "127.0.0.1", 0)
    server.start()
    try:
        r = httpx.post(server.url + "/engines/install", content=b"x" * 4096, timeout=15,
                       headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-tar"})
    finally:
        server.stop()
    assert r.status_code == 507 and "min_free_bytes" in r.text
    assert not list((data_dir / "uploads").glob("*"))


def _closed_by_server(socks: list[socket.socket], until: float, want: int) -> set[socket.socket]:
    """The sockets the server closed (readable at EOF) by ``until`` (monotonic), stopping once ``want`` are."""
    closed: set[socket.socket] = set()
    while len(closed) < want and time.monotonic() < until:
        readable, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.1)
        for sock in readable:
            assert sock.recv(1) == b"", "the server sent something to a silent connection"
            closed.add(sock)
    return closed


def test_idle_connections_are_bounded_and_closed(served: dict[str, Any]) -> None:
    """Silent connections cannot pile up in the node's process: capped, and closed after the head timeout."""
    socks = [socket.create_connection(("127.0.0.1", served["port"]), timeout=20) for _ in range(3 * MAX_CONNECTIONS)]
    try:
        started = time.monotonic()
        early = _closed_by_server(socks, started + HEADER_TIMEOUT / 2, 2 * MAX_CONNECTIONS)
        assert len(early) >= 2 * MAX_CONNECTIONS - 1, f"only {len(early)} connections over the cap were closed at once"
        closed = _closed_by_server(socks, started + HEADER_TIMEOUT + 15, len(socks))
        assert len(closed) == len(socks), f"{len(socks) - len(closed)} silent connections still open"
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(served["url"] + "/healthz", timeout=15).status_code in (200, 503)
