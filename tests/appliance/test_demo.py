"""``appliance demo`` end to end: fresh data directory, demo engines trained, both SRs in the PACS."""

from __future__ import annotations

import re

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
