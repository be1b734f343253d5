"""Kill -9 of ``appliance serve`` while storescu sends 1,000 instances: nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom

from tests.dicom_node._node import OUR_AE, acknowledged_files, write_mr_series
from tests.peers import STORESCU, free_port, peer_env, wait_for_port

COUNT = 1000


def _start_node(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from appliance.cli import main; main()", "serve", "--config", str(config)],
            stdout=out, stderr=out, env={k: v for k, v in os.environ.items() if k != "APPLIANCE_CONFIG"},
        )


def _instances(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("select sop_instance_uid, path from instances").fetchall())
    finally:
        conn.close()


def test_kill_9_during_ingest_loses_nothing_acknowledged(tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "mr", COUNT)
    uid_of = {str(p): pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    port = free_port()
    data_dir = tmp_path / "var"
    config = tmp_path / "appliance.toml"
    config.write_text(
        f'[node]\nae_title = "{OUR_AE}"\nport = {port}\ndata_dir = "{data_dir}"\nmin_free_bytes = 0\n\n'
        '[[peers]]\nae_title = "STORESCU"\nhost = "127.0.0.1"\n'
    )
    log = tmp_path / "serve.log"
    args = [str(STORESCU), "-v", "-aet", "STORESCU", "-aec", OUR_AE, "127.0.0.1", str(port), *map(str, files)]

    node = _start_node(config, log)
    try:
        wait_for_port(port)
        sender = subprocess.Popen(args, env=peer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        db = data_dir / "state.db"
        deadline = time.monotonic() + 120
        while not (db.exists() and len(_instances(db)) >= 100):  # mid-transfer
            assert time.monotonic() < deadline and sender.poll() is None, "the transfer never got going"
            time.sleep(0.01)
        node.send_signal(signal.SIGKILL)
        node.wait(timeout=30)
        output, _ = sender.communicate(timeout=60)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    acked = {uid_of[f] for f in acknowledged_files(output)}
    assert 50 <= len(acked) < COUNT, f"{len(acked)} acknowledged before the kill"  # rows may lead acks

    node = _start_node(config, log)
    try:
        wait_for_port(port)
        spool = data_dir / "spool"
        assert not list(spool.rglob("*.tmp")), "temporary files left after restart"
        rows = _instances(db)
        for uid in acked:  # every acknowledged instance survived, on disk and in the database
            assert uid in rows and Path(rows[uid]).is_file(), uid
        resend = subprocess.run(args, env=peer_env(), capture_output=True, text=True, timeout=300)
        assert resend.returncode == 0, resend.stderr[-2000:]
        assert len(acknowledged_files(resend.stderr + resend.stdout)) == COUNT
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
    rows = _instances(db)
    assert set(rows) == set(uid_of.values())
    on_disk = [p for p in spool.rglob("*") if p.is_file()]
    assert len(on_disk) == COUNT and not [p for p in on_disk if p.suffix != ".dcm"]
    for uid, path in rows.items():
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == uid
