"""The storage tests again with the pynetdicom speed-ups switched off (``dicom_node.speedups``).

Off, the node accepts with pynetdicom's own acceptor and its chunked receive, and
the SCU sends with ``send_c_store`` and its chunked send: the same statuses and
the same bytes as with them on. Each test below is the one of ``test_scp`` or
``test_scu`` of the same name, run here with the switch off.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node import speedups
from dicom_node.scu import Destination, StorageSCU
from tests.dicom_node import test_scp, test_scu
from tests.dicom_node._node import OUR_AE, running_node
from tests.peers import running_storescp, write_mr_instances


@pytest.fixture(autouse=True)
def _speedups_off() -> Iterator[None]:
    with speedups.disabled():
        yield


def test_the_switch_selects_pynetdicoms_own_paths(data_dir: Path, tmp_path: Path) -> None:
    """What the tests below exercise is really the fallback: pynetdicom's association classes, no P-DATA writer."""
    assert not speedups.enabled()
    with running_node(data_dir) as node:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=OUR_AE)
        try:
            assert assoc.is_established
            served = [a for a in node.scp._server.active_associations if a.is_acceptor]
            assert served and all(type(a).__module__.startswith("pynetdicom") for a in served)
            assert all(type(a.dul).__module__.startswith("pynetdicom") for a in served)
        finally:
            assoc.release()
    paths = write_mr_instances(tmp_path / "in", 1)
    with running_storescp(tmp_path / "out") as port:
        with StorageSCU(timeout=10).session(Destination("scp", "STORESCP", "127.0.0.1", port), paths) as session:
            assert session._writer is None
            session.store(paths[0])
        with speedups.disabled():
            speedups.set_enabled(True)
            with StorageSCU(timeout=10).session(Destination("scp", "STORESCP", "127.0.0.1", port), paths) as session:
                assert session._writer is not None
    assert not speedups.enabled()


# the storage SCP on pynetdicom's acceptor
test_echo = test_scp.test_echo
test_stored_as_received = test_scp.test_stored_as_received
test_same_instance_twice_is_stored_once = test_scp.test_same_instance_twice_is_stored_once
test_association_rejected = test_scp.test_association_rejected
test_bad_datasets_fail_and_the_node_keeps_accepting = test_scp.test_bad_datasets_fail_and_the_node_keeps_accepting
test_truncated_data_set_answered_cannot_understand = test_scp.test_truncated_data_set_answered_cannot_understand
test_low_free_space_answers_out_of_resources = test_scp.test_low_free_space_answers_out_of_resources
test_parallel_associations_share_group_commits = test_scp.test_parallel_associations_share_group_commits

# the SCU on pynetdicom's send_c_store
test_files_arrive_in_storescp_in_their_own_syntax = test_scu.test_files_arrive_in_storescp_in_their_own_syntax
test_data_sets_go_on_the_wire_as_stored = test_scu.test_data_sets_go_on_the_wire_as_stored
test_one_association_carries_a_batch = test_scu.test_one_association_carries_a_batch
test_uncompressed_file_is_converted_when_the_peer_wants_another_syntax = (
    test_scu.test_uncompressed_file_is_converted_when_the_peer_wants_another_syntax)
test_failure_status_is_reported_with_hex_and_meaning = test_scu.test_failure_status_is_reported_with_hex_and_meaning
test_tls_delivery_sends_as_stored_and_checks_the_server = test_scu.test_tls_delivery_sends_as_stored_and_checks_the_server
# Not re-run: test_scu.test_large_file_is_sent_in_fragments_never_read_whole. pynetdicom's send_c_store reads
# a file in fragments but puts every P-DATA primitive on the DUL's unbounded ``to_provider_queue``; when the
# socket drains slower than the file is read (a loaded machine) the queue holds most of the file (90 MiB of a
# 96 MiB file measured in the full suite). Bounded send memory is one of the speed-ups' reasons.


@pytest.mark.parametrize(("value", "on"), [("0", False), ("off", False), ("1", True), (None, True)])
def test_the_environment_sets_the_switch_at_start(value: str | None, on: bool) -> None:
    """``DICOM_NODE_PYNETDICOM_SPEEDUPS=0`` starts the process on pynetdicom's own paths (and its chunked receive)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != speedups.ENV_VAR}
    if value is not None:
        env[speedups.ENV_VAR] = value
    code = ("from pynetdicom import _config; import dicom_node.scp; from dicom_node import speedups; "
            "print(speedups.enabled(), _config.STORE_RECV_CHUNKED_DATASET)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(on), str(not on)]
