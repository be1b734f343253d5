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
