"""``appliance serve`` receiving by STOW-RS from a real sender (Orthanc's DICOMweb plugin), and kill -9 mid-upload."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from appliance.demo._scanner import write_dce_study, write_slide_study
from tests.dicom_node._large import data_set_digest
from tests.dicom_node._stow_peer import DICOMWEB_PLUGIN, orthanc_stow_sender, post, push_study, upload
from tests.peers import free_port, wait_for_port, write_mr_instances

TOKEN = "orthanc-token-0123456789"

pytestmark = pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason=f"{DICOMWEB_PLUGIN} missing (orthanc-dicomweb)")


def _config(tmp_path: Path, stow_port: int) -> Path:
    config = tmp_path / "appliance.toml"
    config.write_text(
        f'[node]\nport = {free_port()}\ndata_dir = "{tmp_path / "var"}"\nmin_free_bytes = 0\n\n'
        f'[web]\nport = {free_port()}\n\n'
        f'[dicomweb]\nport = {stow_port}\n[[dicomweb.clients]]\nname = "orthanc"\ntoken = "{TOKEN}"\n\n'
        '[[routes]]\npipeline = "pathology"\nmatch = { Modality = "SM" }\nstable_seconds = 1\n\n'
        '[[routes]]\npipeline = "breast_mri"\nmatch = { Modality = "MR" }\nstable_seconds = 1\n'
    )
    return config


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from appliance.cli import main; main()", "serve", "--config", str(config)],
            stdout=out, stderr=out, env={k: v for k, v in os.environ.items() if k != "APPLIANCE_CONFIG"},
        )


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_orthanc_pushes_a_slide_and_a_dce_study_by_stow_rs(tmp_path: Path) -> None:
    slide = write_slide_study(tmp_path / "slide", size=512)
    dce = write_dce_study(tmp_path / "dce")
    stow_port = free_port()
    config = _config(tmp_path, stow_port)
    node = _serve(config, tmp_path / "serve.log")
    try:
        wait_for_port(stow_port)
        url = f"http://127.0.0.1:{stow_port}/dicomweb"
        with orthanc_stow_sender(tmp_path / "orthanc", url, TOKEN) as orthanc:
            for study in (slide, dce):
                answer = push_study(orthanc, upload(orthanc, study.paths))
                assert answer.status_code == 200, answer.text
        db = tmp_path / "var" / "state.db"
        stored = dict(_rows(db, "select sop_instance_uid, path from instances"))
        sent = {data_set_digest(p) for study in (slide, dce) for p in study.paths}
        assert len(stored) == len(sent) == len(slide.paths) + len(dce.paths)
        assert {data_set_digest(Path(str(p))) for p in stored.values()} == sent  # byte-identical data sets
        assert {r[0] for r in _rows(db, "select calling_ae from instances")} == {"orthanc"}
        deadline = time.monotonic() + 60
        while len(routed := set(_rows(db, "select pipeline, study_uid from jobs"))) < 2:  # routed, as a C-STORE
            assert time.monotonic() < deadline and node.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.2)
        assert routed == {("pathology", slide.study_uid), ("breast_mri", dce.study_uid)}
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0


def test_kill_9_during_stow_rs_loses_nothing_answered(tmp_path: Path) -> None:
    """Every instance a response that reached the client listed as stored is on disk and in the database."""
    paths = write_mr_instances(tmp_path / "mr", 200)
    batches = [paths[i : i + 5] for i in range(0, len(paths), 5)]
    stow_port = free_port()
    config = _config(tmp_path, stow_port)
    log = tmp_path / "serve.log"
    node = _serve(config, log)
    answered: list[str] = []
    errors: list[BaseException] = []

    def send() -> None:
        for batch in batches:
            try:
                response = post(f"http://127.0.0.1:{stow_port}/dicomweb/studies", [p.read_bytes() for p in batch],
                                TOKEN)
            except httpx.HTTPError as exc:
                errors.append(exc)
                return
            if response.status_code != 200:
                errors.append(AssertionError(f"HTTP {response.status_code}: {response.text[:500]}"))
                return
            answered.extend(item["00081155"]["Value"][0] for item in response.json()["00081199"]["Value"])

    try:
        wait_for_port(stow_port)
        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 60
        while len(answered) < 50:
            assert time.monotonic() < deadline and sender.is_alive(), f"{len(answered)} answered; {errors}"
            time.sleep(0.005)
        node.send_signal(signal.SIGKILL)
        node.wait(timeout=30)
        sender.join(timeout=60)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert len(errors) == 1 and isinstance(errors[0], httpx.HTTPError), errors  # the kill, nothing else
    assert 50 <= len(answered) < len(paths), f"{len(answered)} answered before the kill"

    node = _serve(config, log)
    try:
        wait_for_port(stow_port)
        spool = tmp_path / "var" / "spool"
        assert not list(spool.rglob("*.tmp")), "temporary files left after restart"
        rows = dict(_rows(tmp_path / "var" / "state.db", "select sop_instance_uid, path from instances"))
        for uid in answered:
            assert uid in rows and Path(str(rows[uid])).is_file(), uid
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
