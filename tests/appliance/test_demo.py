"""``appliance demo`` end to end: fresh data directory, demo engines trained, both SRs in the PACS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.appliance._demo_run import demo_run


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_delivers_both_reports_and_says_demo(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = demo_run(tmp_path_factory)
    out = run.stdout
    assert run.returncode == 0, f"stdout:\n{out[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    assert "Every SR arrived in the PACS" in out
    rows = [line for line in out.splitlines() if "SR in PACS" in line]
    assert any("pathology" in r for r in rows) and any("breast_mri" in r for r in rows), out
    assert all(re.search(r"\bJ[0-9a-f]{6,}", r) for r in rows), "studies are named by opaque job id"
    assert "SYNTH" not in out and "SYNTHETIC^" not in out, "no patient attributes in the demo output"
    assert out.count("not for clinical use") >= 3
    assert (run.data_dir / "engines").is_dir() and (run.data_dir / "demo-engines" / "bundles.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_exits_1_naming_what_did_not_arrive(tmp_path_factory: pytest.TempPathFactory) -> None:
    import os
    import subprocess
    import sys

    from tests.appliance._demo_run import ROOT

    run = demo_run(tmp_path_factory)  # engines cached in its data directory
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-c", "from appliance.cli import main; main()", "demo", "--data-dir", str(run.data_dir),
         "--no-orthanc", "--timeout", "0.5"],
        cwd=run.data_dir.parent, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Demo failed" in proc.stdout and "timed out after" in proc.stdout
    assert "PACS: storage SCP" in proc.stdout and "not for clinical use" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_terminal_shows_progress_not_exporter_chatter(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Issue 16: torch exporter warnings and ONNX Runtime calibration output go to the demo log."""
    run = demo_run(tmp_path_factory)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    terminal = run.stdout + run.stderr
    log = (run.data_dir / "demo.log").read_text(errors="replace")
    assert "Collecting tensor data" in log  # the percentile calibrator ran, and printed there
    for chatter in ("Collecting tensor data", "making histogram", "Warning:", "[torch.onnx]"):
        assert chatter not in terminal, f"{chatter!r} on the demo's terminal"
    shown = " ".join(run.stdout.split())
    assert f"export log: {run.data_dir / 'demo.log'}" in shown and "Every SR arrived in the PACS" in shown


def _orthanc_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name == "Orthanc" and int(rest[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_keep_running_demo_stops_its_orthanc(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Issue 16: SIGTERM to ``appliance demo --keep-running`` exits and leaves no Orthanc behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.appliance._demo_run import ROOT
    from tests.peers import ORTHANC

    if not ORTHANC.is_file():
        pytest.skip(f"{ORTHANC} is not installed")
    run = demo_run(tmp_path_factory)  # engines cached in its data directory
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    out_path = run.data_dir.parent / "keep-running.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from appliance.cli import main; main()", "demo", "--data-dir", str(run.data_dir),
             "--keep-running", "--timeout", "240"],
            cwd=run.data_dir.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 420
            while "keeps running" not in out_path.read_text(errors="replace"):
                assert proc.poll() is None, out_path.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "the demo did not reach --keep-running"
                time.sleep(0.5)
            orthancs = _orthanc_children(proc.pid)
            assert len(orthancs) == 1, orthancs
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=90)
        finally:
            if proc.poll() is None:  # the test failed before its SIGTERM: still stop the demo and its PACS
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    deadline = time.monotonic() + 30
    while _alive(orthancs[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(orthancs[0]), f"Orthanc {orthancs[0]} was left running after SIGTERM"
    text = out_path.read_text(errors="replace")
    assert code == 0 and "stopping" in text, text[-3000:]
