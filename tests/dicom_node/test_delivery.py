"""Delivery to PACS with real peers: Orthanc, a refusing pynetdicom SCP, a hung listener."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.outbox import Outbox, delivery_component, enqueue, outbox_dir
from appliance.state import StateStore
from dicom_node.delivery import DeliverySender, RetryPolicy
from dicom_node.scu import Destination, StorageSCU
from tests.dicom_node._delivery_helpers import OUT_OF_RESOURCES, Recorder, silent_listener, status_scp
from tests.peers import Orthanc, free_port, running_orthanc, write_mr_instances

APPLIANCE = Path(sys.executable).with_name("appliance")
FAST = RetryPolicy(initial=0.2, max_backoff=0.5, max_age=60.0)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the tests that never stop it (each checks only its own SOP Instance UIDs)."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc


def _found(orthanc: Orthanc, sop_instance_uid: str) -> int:
    query = {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
    with orthanc.rest() as client:
        return len(client.post("/tools/find", json=query).raise_for_status().json())


@pytest.fixture
def store(data_dir: Path) -> Iterator[StateStore]:
    state = StateStore.for_data_dir(data_dir)
    yield state
    state.close()


def _pacs(orthanc: Orthanc) -> Destination:
    return Destination("pacs", orthanc.aet, "127.0.0.1", orthanc.dicom_port)


def _sender(
    store: StateStore, destinations: list[Destination], recorder: Recorder, policy: RetryPolicy = FAST, timeout: float = 10.0
) -> DeliverySender:
    return DeliverySender(
        Outbox(store),
        {d.name: d for d in destinations},
        StorageSCU("APPLIANCE", timeout=timeout),
        policy,
        poll_interval=0.05,
        listener=recorder,
        rng=random.Random(7),
    )


def _rows(store: StateStore) -> dict[tuple[str, str], dict[str, object]]:
    return {(r["destination"], r["sop_instance_uid"]): r for r in store.query("select * from deliveries")}


def _delivered(destination: str, count: int = 1):  # type: ignore[no-untyped-def]
    return lambda outcomes: sum(o.state == "delivered" and o.delivery.destination == destination for o in outcomes) >= count


def test_enqueue_is_idempotent_per_destination_and_sop_instance(store: StateStore, data_dir: Path) -> None:
    path = write_mr_instances(outbox_dir(data_dir), 1, study_each=True)[0]
    first = enqueue(store, "job-1", path, path.stem, ["pacs", "archive", "pacs"])
    again = enqueue(store, "job-1", path, path.stem, ["archive", "pacs"])
    assert len(first) == 2 and sorted(first) == sorted(again)
    rows = _rows(store)
    assert set(rows) == {("pacs", path.stem), ("archive", path.stem)}
    assert {r["state"] for r in rows.values()} == {"pending"}


def test_outbox_leases_hide_rows_and_retries_wait_for_their_time(store: StateStore, data_dir: Path) -> None:
    paths = write_mr_instances(outbox_dir(data_dir), 2, study_each=True)
    for path in paths:
        enqueue(store, "job-1", path, path.stem, ["pacs"])
    outbox = Outbox(store, lease_seconds=30)
    now = time.time() + 1
    leased = outbox.lease("pacs", 10, now)
    assert [d.sop_instance_uid for d in leased] == [p.stem for p in paths]
    assert outbox.lease("pacs", 10, now) == [] and outbox.lease("other", 10, now) == []
    outbox.mark_retry(leased[0].id, "refused", now + 5)
    outbox.mark_delivered(leased[1].id, now)
    assert outbox.lease("pacs", 10, now + 4) == []
    again = outbox.lease("pacs", 10, now + 5)
    assert [(d.id, d.attempts) for d in again] == [(leased[0].id, 1)]
    outbox.mark_dead(again[0].id, "gave up")
    assert outbox.lease("pacs", 10, now + 3600) == []
    states = {r["id"]: (r["state"], r["attempts"], r["last_error"]) for r in store.query("select * from deliveries")}
    assert states == {leased[0].id: ("dead", 2, "gave up"), leased[1].id: ("delivered", 1, "")}


@pytest.mark.parametrize(("attempts", "low", "high"), [(1, 1.0, 2.0), (2, 2.0, 4.0), (3, 4.0, 8.0), (9, 5.0, 10.0), (400, 5.0, 10.0)])
def test_backoff_doubles_with_jitter_up_to_the_cap(attempts: int, low: float, high: float) -> None:
    policy = RetryPolicy(initial=2.0, max_backoff=10.0, max_age=60.0)
    waits = [policy.backoff(attempts, random.Random(seed)) for seed in range(50)]
    assert all(low <= w <= high for w in waits) and len(set(waits)) > 1


def test_result_files_arrive_in_orthanc(store: StateStore, data_dir: Path, pacs: Orthanc) -> None:
    paths = write_mr_instances(outbox_dir(data_dir), 3, study_each=True)
    for path in paths:
        enqueue(store, "job-1", path, path.stem, ["pacs"])
    recorder = Recorder()
    sender = _sender(store, [_pacs(pacs)], recorder)
    sender.start()
    try:
        recorder.wait_for(_delivered("pacs", 3), timeout=60)
    finally:
        sender.stop()
    assert {r["state"] for r in _rows(store).values()} == {"delivered"}
    assert [_found(pacs, path.stem) for path in paths] == [1, 1, 1]


@pytest.mark.slow  # Orthanc stopped and restarted
def test_delivery_retries_while_orthanc_is_down_and_arrives_after_restart(
    store: StateStore, data_dir: Path, orthanc: Orthanc
) -> None:
    orthanc.stop()
    path = write_mr_instances(outbox_dir(data_dir), 1, study_each=True)[0]
    enqueue(store, "job-2", path, path.stem, ["pacs"])
    recorder = Recorder()
    sender = _sender(store, [_pacs(orthanc)], recorder)
    sender.start()
    try:
        outcomes = recorder.wait_for(lambda o: len(o) >= 2, timeout=30)
        assert {o.state for o in outcomes} == {"retry"}
        assert "cannot connect" in outcomes[0].reason
        assert _rows(store)[("pacs", path.stem)]["state"] == "pending"
        orthanc.start()
        recorder.wait_for(_delivered("pacs"), timeout=60)
    finally:
        sender.stop()
    row = _rows(store)[("pacs", path.stem)]
    assert row["state"] == "delivered" and int(row["attempts"]) >= 3  # type: ignore[call-overload]
    assert len(orthanc.instances()) == 1


def test_failure_status_ends_dead_with_its_reason_after_max_age(store: StateStore, data_dir: Path) -> None:
    path = write_mr_instances(outbox_dir(data_dir), 1, study_each=True)[0]
    enqueue(store, "job-3", path, path.stem, ["refuser"])
    recorder = Recorder()
    with status_scp(OUT_OF_RESOURCES) as port:
        policy = RetryPolicy(initial=0.1, max_backoff=0.3, max_age=1.5)
        sender = _sender(store, [Destination("refuser", "REFUSER", "127.0.0.1", port)], recorder, policy)
        sender.start()
        try:
            outcomes = recorder.wait_for(lambda o: any(x.state == "dead" for x in o), timeout=30)
        finally:
            sender.stop()
    assert [o.state for o in outcomes][-1] == "dead" and len(outcomes) >= 3
    assert all(o.state == "retry" for o in outcomes[:-1])
    row = _rows(store)[("refuser", path.stem)]
    assert row["state"] == "dead"
    assert "0xA700 Failure: Refused: Out of Resources" in str(row["last_error"])
    assert str(row["last_error"]).startswith(f"gave up after {row['attempts']} attempts")


def test_unreadable_file_is_dead_at_once(store: StateStore, data_dir: Path) -> None:
    missing = outbox_dir(data_dir) / "1.2.3.dcm"
    enqueue(store, "job-4", missing, "1.2.3", ["pacs"])
    recorder = Recorder()
    sender = _sender(store, [Destination("pacs", "NOBODY", "127.0.0.1", free_port())], recorder)
    outcomes = sender.run_once("pacs")
    assert [o.state for o in outcomes] == ["dead"]
    assert "does not exist" in _rows(store)[("pacs", "1.2.3")]["last_error"]  # type: ignore[operator]


def test_hung_destination_does_not_block_another(store: StateStore, data_dir: Path, pacs: Orthanc) -> None:
    path = write_mr_instances(outbox_dir(data_dir), 1, study_each=True)[0]
    enqueue(store, "job-5", path, path.stem, ["hung", "pacs"])
    recorder = Recorder()
    timeout = 20.0
    with silent_listener() as port:
        hung = Destination("hung", "HUNG", "127.0.0.1", port)
        sender = _sender(store, [hung, _pacs(pacs)], recorder, timeout=timeout)
        started = time.monotonic()
        sender.start()
        try:
            recorder.wait_for(_delivered("pacs"), timeout=timeout / 2)
            assert time.monotonic() - started < timeout / 2
            assert recorder.states("hung") == []  # still waiting for its association
        finally:
            stopping = time.monotonic()
            sender.stop()
            stopped_in = time.monotonic() - stopping
    assert stopped_in < 3
    assert _rows(store)[("hung", path.stem)]["state"] == "pending"
    assert _found(pacs, path.stem) == 1


def test_delivery_component_from_configuration(store: StateStore, data_dir: Path, pacs: Orthanc) -> None:
    assert delivery_component(parse_config({"node": {"data_dir": str(data_dir)}}), store) is None
    config = parse_config(
        {
            "node": {"data_dir": str(data_dir)},
            "delivery": {"initial_backoff_seconds": 0.1, "timeout_seconds": 5},
            "destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
        }
    )
    sender = delivery_component(config, store)
    assert sender is not None and sender.name == "delivery"
    path = write_mr_instances(outbox_dir(data_dir), 1, study_each=True)[0]
    enqueue(store, "job-6", path, path.stem, ["pacs"])
    assert [o.state for o in sender.run_once("pacs")] == ["delivered"]
    assert _found(pacs, path.stem) == 1


def test_stop_is_idempotent_and_prompt_when_idle(store: StateStore) -> None:
    sender = _sender(store, [Destination("pacs", "NOBODY", "127.0.0.1", free_port())], Recorder())
    sender.start()
    started = time.monotonic()
    sender.stop()
    sender.stop()
    assert time.monotonic() - started < 3
    assert sender.name == "delivery"


def _config_file(tmp_path: Path, data_dir: Path, orthanc: Orthanc) -> Path:
    config = tmp_path / "appliance.toml"
    config.write_text(
        f"""
[node]
data_dir = "{data_dir}"

[delivery]
timeout_seconds = 5

[[destinations]]
name = "pacs"
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[[destinations]]
name = "nobody"
ae_title = "NOBODY"
host = "127.0.0.1"
port = {free_port()}
"""
    )
    return config


@pytest.mark.parametrize(
    ("name", "code", "says"),
    [
        ("pacs", 0, "echo pacs: success"),
        ("nobody", 1, "echo nobody: failed: cannot connect"),
        ("missing", 1, "unknown destination 'missing'"),
    ],
)
def test_echo_command(tmp_path: Path, data_dir: Path, pacs: Orthanc, name: str, code: int, says: str) -> None:
    config = _config_file(tmp_path, data_dir, pacs)
    proc = subprocess.run(
        [str(APPLIANCE), "echo", name, "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert says in proc.stdout + proc.stderr
