"""How each STOW-RS answer ends a delivery (PS3.18 10.5.3): delivered, retried, or dead with its reason.

Orthanc cannot be made to answer 5xx, 429 or an Out of Resources Failure Reason
on demand, so a small HTTP server on loopback answers every Store Instances
request with the status and response the test sets (as ``status_scp`` does for
C-STORE statuses).
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.outbox import Outbox, enqueue, outbox_dir
from appliance.state import StateStore
from dicom_node.delivery import DeliverySender, RetryPolicy
from dicom_node.scu import StorageSCU
from dicom_node.stow_client import StowClient, WebDestination
from tests.dicom_node._delivery_helpers import Recorder
from tests.peers import write_mr_instances

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"


def _item(sop_instance_uid: str, reason_tag: str | None = None, reason: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [SOP_CLASS]},
                            "00081155": {"vr": "UI", "Value": [sop_instance_uid]}}
    if reason_tag is not None:
        item[reason_tag] = {"vr": "US", "Value": [reason]}
    return item


class _Archive(BaseHTTPRequestHandler):
    """Answers each POST with ``status`` and a Store Instances Response built by ``answer(sop_instance_uid)``."""

    status = 200
    answer: Any = staticmethod(lambda uid: {})
    sop_instance_uid = ""
    paths: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.paths.append(self.path)
        body = json.dumps(self.answer(self.sop_instance_uid)).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/dicom+json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the test server
        return


@pytest.fixture
def archive() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Archive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def _stored(uid: str) -> dict[str, Any]:
    return {"00081199": {"vr": "SQ", "Value": [_item(uid)]}}


def _failed(reason: int) -> Any:
    return lambda uid: {"00081198": {"vr": "SQ", "Value": [_item(uid, "00081197", reason)]}}


@pytest.mark.parametrize(
    ("status", "answer", "state", "says"),
    [
        (200, _stored, "delivered", ""),
        (202, lambda uid: {"00081199": {"vr": "SQ", "Value": [_item(uid, "00081196", 0xB000)]}}, "delivered", ""),
        (200, lambda uid: {}, "retry", "answered HTTP 200 OK but did not list the instance as stored"),
        (202, _failed(0xA700), "retry", "HTTP 202 Accepted: Failure Reason 0xA700 Failure: Refused: Out of Resources"),
        (409, _failed(0xA7FF), "retry", "HTTP 409 Conflict: Failure Reason 0xA7FF"),
        (409, _failed(0xC000), "dead", "HTTP 409 Conflict: Failure Reason 0xC000 Failure: Cannot Understand"),
        (202, _failed(0xA900), "dead", "Failure Reason 0xA900 Failure: Data Set Does Not Match SOP Class"),
        (503, lambda uid: {}, "retry", "answered HTTP 503 Service Unavailable"),
        (500, _failed(0xC000), "retry", "answered HTTP 500 Internal Server Error"),
        (429, lambda uid: {}, "retry", "answered HTTP 429 Too Many Requests"),
        (408, lambda uid: {}, "retry", "answered HTTP 408 Request Timeout"),
        (400, lambda uid: {}, "dead", "refused the instance: HTTP 400 Bad Request"),
        (403, lambda uid: {}, "retry", "answered HTTP 403 Forbidden"),
        (401, lambda uid: {}, "retry", "answered HTTP 401 Unauthorized"),
        (413, lambda uid: {}, "dead", "refused the instance: HTTP 413 Request Entity Too Large"),
        (415, lambda uid: {}, "dead", "refused the instance: HTTP 415 Unsupported Media Type"),
    ],
)
def test_each_answer_ends_the_delivery_as_ps3_18_says(
    archive: str, data_dir: Path, status: int, answer: Any, state: str, says: str
) -> None:
    (path,) = write_mr_instances(outbox_dir(data_dir), 1, study_each=True)
    _Archive.status, _Archive.answer, _Archive.sop_instance_uid, _Archive.paths = status, staticmethod(answer), path.stem, []
    store = StateStore.for_data_dir(data_dir)
    try:
        enqueue(store, "job-without-row", path, path.stem, ["archive"])
        sender = DeliverySender(
            Outbox(store), {"archive": WebDestination("archive", archive)}, StorageSCU(timeout=5),
            RetryPolicy(initial=0.2, max_backoff=0.5, max_age=60.0), listener=Recorder(), rng=random.Random(3),
            senders={"dicomweb": StowClient(timeout=5)},
        )
        (outcome,) = sender.run_once("archive")
        (row,) = store.query("select state, last_error from deliveries")
    finally:
        store.close()
    assert outcome.state == state, outcome
    assert says in outcome.reason
    assert row["state"] == {"retry": "pending"}.get(state, state)
    assert _Archive.paths == ["/dicom-web/studies"]  # no job row: the study is unknown, so no study in the URL


def test_abort_all_ends_a_request_waiting_on_a_hung_archive(data_dir: Path) -> None:
    """A stopping sender does not wait out the request timeout (60 s here) on an archive that never answers."""
    from dicom_node.delivery import PendingDelivery
    from tests.dicom_node._delivery_helpers import silent_listener

    (path,) = write_mr_instances(outbox_dir(data_dir), 1, study_each=True)
    client = StowClient(timeout=60)
    with silent_listener() as port:
        destination = WebDestination("hung", f"http://127.0.0.1:{port}/dicom-web")
        delivery = PendingDelivery(1, "hung", path, path.stem, 0, 0.0)
        results: list[Any] = []
        worker = threading.Thread(target=lambda: results.extend(client.send_batch(destination, [delivery])))
        worker.start()
        sending = threading.Event()
        for _ in range(300):  # until the request is on its connection (the kernel completed the handshake)
            live = client._connections.get(destination)
            if live is not None and any(getattr(c, "sock", None) for c in live.adapter._live):
                sending.set()
                break
            sending.wait(0.05)
        assert sending.is_set()
        client.abort_all()
        worker.join(timeout=20)
        assert not worker.is_alive()
    (result,) = results
    assert not result.ok and "connection refused, reset or unreachable" in str(result.error)
