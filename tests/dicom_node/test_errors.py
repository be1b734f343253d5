"""Control flow on error types, not on messages: a stopped sender's files go back to the queue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.outbox import Outbox, enqueue, outbox_dir
from appliance.state import StateStore
from dicom_node.delivery import DeliverySender, RetryPolicy
from dicom_node.errors import DeliveryFailed, SenderStopped
from dicom_node.scu import Destination, StorageSCU
from tests.peers import free_port, write_mr_instances

SLOW = RetryPolicy(initial=100.0, max_backoff=100.0, max_age=3600.0)


@pytest.fixture
def stopped(data_dir: Path) -> Iterator[tuple[StateStore, DeliverySender]]:
    """A state store with one pending delivery, and a sender already stopped (as at shutdown)."""
    store = StateStore.for_data_dir(data_dir)
    path = write_mr_instances(outbox_dir(data_dir), 1, study_each=True)[0]
    enqueue(store, "job-s", path, path.stem, ["pacs"])
    nobody = Destination("pacs", "NOBODY", "127.0.0.1", free_port())
    sender = DeliverySender(Outbox(store), {"pacs": nobody}, StorageSCU("APPLIANCE", timeout=5), SLOW)
    sender.stop()
    yield store, sender
    store.close()


def test_a_stopped_sender_puts_its_files_back_due_now(stopped: tuple[StateStore, DeliverySender]) -> None:
    _, sender = stopped  # the SCU answers every file of the batch with SenderStopped, without connecting
    now = time.time() + 1
    (outcome,) = sender.run_once("pacs", now=now)
    assert outcome.state == "retry" and outcome.next_attempt_at is not None
    assert outcome.next_attempt_at <= time.time(), "due now: no backoff (SLOW's is 100 s) for a shutdown"
    assert "sender stopped" in outcome.reason


def test_the_message_text_alone_does_not_mean_stopped(stopped: tuple[StateStore, DeliverySender]) -> None:
    """A failure that merely says "sender stopped" is an ordinary failure: backoff, as for any other."""
    store, sender = stopped
    now = time.time() + 1
    (delivery,) = Outbox(store).lease("pacs", 10, now)
    outcome = sender._failed(delivery, DeliveryFailed("peer said: sender stopped"), now)
    assert outcome.state == "retry" and outcome.next_attempt_at is not None and outcome.next_attempt_at >= now + 50
    assert issubclass(SenderStopped, DeliveryFailed)
