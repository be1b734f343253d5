"""A hostile network cannot stall or exhaust the node (issue 15, findings 1-5, 7, 8, 10, 11).

Every probe comes from outside the node's process (raw sockets, dcmtk, our SCU,
all on 127.0.0.1) while a legitimate peer must still be served within 15 s.
Limits are set low so that each probe takes seconds.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from appliance.state import StateStore
from dicom_node._c_store import FileInfo, read_info
from dicom_node.scu import Destination, StorageSCU
from dicom_node.tls import client_context
from tests.dicom_node._crafted import associate_rq, deeply_nested, deflate_bomb, deflated_instance, write_part10
from tests.dicom_node._served import ServedNode, served_node
from tests.dicom_node.test_tls import pki  # noqa: F401 - the fixture
from tests.peers import ECHOSCU, peer_env

FAST = {"pdu_read_timeout": 2.0, "artim_timeout": 2.0, "tls_handshake_timeout": 2.0,
        "max_connections": 48, "max_connections_per_source": 8}
PEERS = [["STORESCU", "127.0.0.1"], ["SCANNER1", "127.0.0.1"]]
ATTACKER = "127.0.0.2"  # a second loopback address, so per-source limits tell attacker and peer apart
SERVED_WITHIN = 15.0
RSS_GROWTH_MIB = 300


def _echo_served(port: int) -> float:
    """dcmtk echoscu as the legitimate peer; returns how long it took (fails past 15 s)."""
    start = time.monotonic()
    proc = subprocess.run([str(ECHOSCU), "-aet", "STORESCU", "-aec", "APPLIANCE", "127.0.0.1", str(port)],
                          env=peer_env(), capture_output=True, text=True, timeout=SERVED_WITHIN)
    assert proc.returncode == 0, proc.stderr
    elapsed = time.monotonic() - start
    assert elapsed < SERVED_WITHIN
    return elapsed


def _send(port: int, path: Path) -> tuple[int | None, str]:
    """Our SCU sends one stored file as it is; returns (status, error text)."""
    scu = StorageSCU("SCANNER1", timeout=30)
    (result,) = scu.send_files(Destination("node", "APPLIANCE", "127.0.0.1", port), [path])
    return result.status, str(result.error or "")


def _status_of(error: str) -> str:
    return error.split("answered C-STORE with ", 1)[-1][:6]


@contextmanager
def _connections(count: int, source: str = ATTACKER, first: bytes = b"") -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((source, 0))
            sock.settimeout(20)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        while sock.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _stored(node: ServedNode) -> list[Path]:
    return [p for p in (node.data_dir / "spool").rglob("*.dcm") if ".incoming" not in p.parts]


def test_partial_pdus_and_idle_connections_neither_hold_slots_nor_lock_peers_out(data_dir: Path) -> None:
    """Findings 2: 5 bytes of a PDU header, 40 idle connections from one address."""
    with served_node(data_dir, {"limits": FAST, "peers": PEERS}) as node, _connections(40) as socks:
        for sock in socks:
            try:
                sock.connect(("127.0.0.1", node.port))
                sock.sendall(b"\x01\x00\x00\x00\x00")  # 5 of the 6 bytes of a PDU header
            except OSError:
                pass  # refused at once: over the per-source limit
        _echo_served(node.port)
        assert node.wait_for_log(f"connection from {ATTACKER} refused: 8 connections open from this address")
        assert all(_closed_by_peer(sock) for sock in socks)  # every one closed by the node within seconds
        assert node.wait_for_log("no complete PDU within 2 s")
        _echo_served(node.port)


def test_oversized_associate_rq_is_refused_from_its_header(data_dir: Path) -> None:
    """Finding 3: an A-ASSOCIATE-RQ declaring 1 GiB is refused before its body is read or AE titles checked."""
    with served_node(data_dir, {"limits": FAST, "peers": PEERS}) as node:
        idle = node.rss_mib()
        with _connections(4, "127.0.0.1") as socks:
            for sock in socks:
                sock.connect(("127.0.0.1", node.port))
                sock.sendall(struct.pack(">BBI", 0x01, 0, 1 << 30) + bytes(1 << 20))
            for sock in socks:
                reply = sock.recv(10)
                assert reply[:1] == b"\x07", reply  # A-ABORT (PS3.8 9.3.8)
                assert _closed_by_peer(sock)
            _echo_served(node.port)
        assert node.peak_mib() - idle < RSS_GROWTH_MIB
        assert node.wait_for_log("PDU type 0x01 declares 1073741824 bytes, more than the limit of 65536")


def test_pdata_longer_than_announced_is_refused(data_dir: Path) -> None:
    """Finding 3: the maximum PDU we announce is enforced before a P-DATA-TF body is read."""
    with served_node(data_dir, {"limits": {**FAST, "max_pdu": 16384}, "peers": PEERS}) as node:
        with _connections(1, "127.0.0.1") as (sock,):
            sock.connect(("127.0.0.1", node.port))
            sock.sendall(associate_rq(b"STORESCU"))
            assert sock.recv(1)[:1] == b"\x02"  # A-ASSOCIATE-AC
            sock.recv(65536)
            sock.sendall(struct.pack(">BBI", 0x04, 0, 1 << 30) + bytes(1 << 16))
            assert _closed_by_peer(sock)
        assert node.wait_for_log("PDU type 0x04 declares 1073741824 bytes, more than the limit of 16384")
        _echo_served(node.port)


def test_silent_tls_connections_do_not_block_the_accept_thread(data_dir: Path, pki: Path) -> None:  # noqa: F811
    """Finding 1: the TLS handshake runs in the connection's thread, bounded, and a refused one is logged."""
    from pynetdicom import AE

    settings = {"limits": FAST, "peers": PEERS, "tls": [str(pki / "server.crt"), str(pki / "server.key")]}
    with served_node(data_dir, settings) as node, _connections(3, "127.0.0.1") as socks:
        for sock in socks:
            sock.connect(("127.0.0.1", node.port))  # and say nothing
        start = time.monotonic()
        ae = AE(ae_title="SCANNER1")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="APPLIANCE",
                             tls_args=(client_context(pki / "ca.crt"), "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        assert time.monotonic() - start < SERVED_WITHIN
        assert node.wait_for_log("refused TLS handshake from 127.0.0.1: timed out")
        with _connections(1, "127.0.0.1") as (plain,):
            plain.connect(("127.0.0.1", node.port))
            plain.sendall(associate_rq(b"SCANNER1"))  # no TLS at all
            assert _closed_by_peer(plain)
        assert node.wait_for_log("refused TLS handshake from 127.0.0.1: WRONG_VERSION_NUMBER") or \
            node.wait_for_log("refused TLS handshake from 127.0.0.1: ", 1)


def test_deflate_bomb_is_refused_once_and_bounded(data_dir: Path, tmp_path: Path) -> None:
    """Finding 4: a 3 MB deflated data set inflating to 3 GiB is refused 0xA700 with a reason, memory bounded."""
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 3 << 30)
    assert bomb.stat().st_size < 4 << 20
    good = deflated_instance(tmp_path / "good.dcm", SeriesDescription="deflated fine")
    with served_node(data_dir, {"limits": FAST, "peers": PEERS}) as node:
        idle = node.rss_mib()
        start = time.monotonic()
        status, error = _send(node.port, bomb)
        assert time.monotonic() - start < SERVED_WITHIN
        assert status is None and _status_of(error) == "0xA700", error
        assert "inflates more than 100 times" in error
        assert node.peak_mib() - idle < RSS_GROWTH_MIB
        _echo_served(node.port)
        status, error = _send(node.port, good)
        assert status == 0, error
        assert len(_stored(node)) == 1
    store = StateStore.for_data_dir(data_dir)
    try:
        (row,) = store.query("select series_description from series")
        assert row["series_description"] == "deflated fine"  # from the scan: nothing inflates it again
    finally:
        store.close()


def test_deep_nesting_is_refused_at_the_door(data_dir: Path, tmp_path: Path) -> None:
    """Finding 5: sequences nested 450 deep are answered 0xC000 with the reason; nothing is stored."""
    deep = deeply_nested(tmp_path / "deep.dcm", 450)
    with served_node(data_dir, {"limits": FAST, "peers": PEERS}) as node:
        status, error = _send(node.port, deep)
        assert status is None and _status_of(error) == "0xC000", error
        assert "nest deeper than 32 levels" in error
        status, error = _send(node.port, deeply_nested(tmp_path / "ok.dcm", 8))
        assert status == 0, error
        assert len(_stored(node)) == 1


def test_uid_with_trailing_newline_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """Finding 7: ``$`` no longer lets a final newline through; no directory is named after it."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.StudyInstanceUID = "1.2.3.4"  # 7 characters, padded to 8 with NUL on write
    path = tmp_path / "newline.dcm"
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes().replace(b"1.2.3.4\x00", b"1.2.3.4\n", 1))
    with served_node(data_dir, {"limits": FAST, "peers": PEERS}) as node:
        status, error = _send(node.port, path)
        assert status is None and _status_of(error) == "0xC001", error
        assert not _stored(node)


def test_overlong_uid_in_the_command_set_gets_a_status_not_an_abort(data_dir: Path) -> None:
    """Finding 11: a 65-character Affected SOP Instance UID is answered 0xC001; the association goes on."""
    good = Path(get_testdata_file("MR_small.dcm"))
    info = read_info(good)
    overlong = FileInfo(good, info.sop_class_uid, "1." + "2" * 63, info.transfer_syntax, info.offset)
    with served_node(data_dir, {"limits": FAST, "peers": PEERS}) as node:
        scu = StorageSCU("SCANNER1", timeout=30)
        with scu.session(Destination("node", "APPLIANCE", "127.0.0.1", node.port), [good]) as session:
            with pytest.raises(Exception, match="0xC001"):
                session.store(good, overlong)
            assert session.store(good) == 0
        assert len(_stored(node)) == 1


def test_same_sop_instance_under_another_study_is_refused_without_a_second_file(data_dir: Path, tmp_path: Path) -> None:
    """Finding 8: the named status 0xC003; the first file and row stay; a plain re-send stays a success."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    ds.save_as(first, enforce_file_format=True)
    ds.StudyInstanceUID = generate_uid()
    ds.save_as(second, enforce_file_format=True)
    with served_node(data_dir, {"limits": FAST, "peers": PEERS}) as node:
        assert _send(node.port, first)[0] == 0
        status, error = _send(node.port, second)
        assert status is None and _status_of(error) == "0xC003", error
        assert _send(node.port, first)[0] == 0
        assert len(_stored(node)) == 1


CHARSETS = [("ISO_IR 192", "Dynamik_ä_T1 ダイナミック"), (["", "ISO 2022 IR 87"], "Dynamik_T1 ダイナミック"),
            ("ISO_IR 100", "Dynamik_ä_T1"), ("", "plain ASCII")]


def test_series_description_decoded_with_its_character_set(data_dir: Path, tmp_path: Path) -> None:
    """Finding 10: Specific Character Set handled by pydicom, ISO 2022 escapes included."""
    expected = {}
    paths = []
    for index, (charset, description) in enumerate(CHARSETS):
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        ds.SpecificCharacterSet = charset
        ds.SeriesDescription = description
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(tmp_path / f"charset{index}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
        expected[str(ds.SeriesInstanceUID)] = description
    with served_node(data_dir, {"limits": FAST, "peers": PEERS}) as node:
        for path in paths:
            assert _send(node.port, path)[0] == 0
    store = StateStore.for_data_dir(data_dir)
    try:
        rows = store.query("select series_uid, series_description from series")
        assert {r["series_uid"]: r["series_description"] for r in rows} == expected
    finally:
        store.close()


def test_calling_ae_title_cannot_inject_log_lines(data_dir: Path) -> None:
    """Finding 11: a calling AE title with a newline is logged escaped, on one line."""
    with served_node(data_dir, {"limits": FAST, "peers": PEERS}) as node:
        with _connections(1, "127.0.0.1") as (sock,):
            sock.connect(("127.0.0.1", node.port))
            sock.sendall(associate_rq(b"EVIL\nFORGED"))
            assert sock.recv(1)[:1] in (b"\x03", b"\x07")  # A-ASSOCIATE-RJ, or A-ABORT from pynetdicom's decoder
        assert node.wait_for_log("EVIL\\nFORGED")
        assert not any(line.startswith("FORGED") for line in node.log)
        _echo_served(node.port)


def test_limits_come_from_the_node_configuration(data_dir: Path) -> None:
    """The ``[node]`` keys reach the SCP; bad values are named."""
    from appliance.config import parse_config
    from appliance.errors import ConfigError
    from appliance.ingest import node_component

    config = parse_config({"node": {
        "data_dir": str(data_dir), "max_pdu": 32768, "pdu_read_timeout": 5, "max_connections_per_source": 3,
        "listen_backlog": 256, "max_dataset_bytes_by_sop_class": {"1.2.840.10008.5.1.4.1.1.4": 2048},
        "max_inflate_ratio": 50,
    }})
    store = StateStore.for_data_dir(data_dir)
    try:
        scp = node_component(config, store)
        assert (scp.limits.max_pdu, scp.limits.pdu_read_timeout, scp.limits.max_connections_per_source,
                scp.limits.backlog) == (32768, 5.0, 3, 256)
        assert scp.dataset_limits.for_sop_class("1.2.840.10008.5.1.4.1.1.4") == 2048
        assert scp.dataset_limits.for_sop_class("1.2.840.10008.5.1.4.1.1.77.1.6") == 4 << 30  # defaults kept
        assert scp.dataset_limits.max_inflate_ratio == 50
    finally:
        store.close()
    with pytest.raises(ConfigError, match="max_pdu"):
        parse_config({"node": {"max_pdu": 0}})
    with pytest.raises(ConfigError, match="'1.2.04' in max_dataset_bytes_by_sop_class is not a SOP Class UID"):
        parse_config({"node": {"max_dataset_bytes_by_sop_class": {"1.2.04": 5000}}})
