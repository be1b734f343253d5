"""End to end (issue 13): real-protocol DCE studies through ``appliance serve`` into a real Orthanc.

A 6-phase single-series study and a 6-series study with per-series Temporal
Position Identifiers (GE/Siemens style) are scored by a signed, installed
``breast_mri`` engine (the tests' tiny ONNX model, so no training is needed)
whose card states its phases by time after injection; a 3-phase study that ends too
early is refused and the "AI result not available" SR reaches Orthanc instead.
Every SR is fetched back from Orthanc and judged by dciodvfy and dsrdump.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.demo._scanner import DemoStudy, send_study
from tests.appliance import _e2e
from tests.mri._studies import build_study
from tests.mri.test_protocols import TIMED_CARD, TIMINGS
from tests.mri.tiny_engine import export_tiny, install_tiny_bundle
from tests.peers import DSRDUMP, Orthanc, dciodvfy, require_tool

#: quiet time before a study is complete: sending the 6-series study can pause on a loaded machine
MR_ROUTE = {"pipeline": "breast_mri", "match": {"Modality": "MR"}, "stable_seconds": 5}


@pytest.fixture
def serves() -> Iterator[list[_e2e.Serve]]:
    started: list[_e2e.Serve] = []
    yield started
    for serve in started:
        serve.close()


def _study(directory: Path, encoding: str, count: int, seed: int) -> DemoStudy:
    directory.mkdir(parents=True)
    paths = []
    for ds in build_study(TIMINGS[count], encoding, seed=seed):
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return DemoStudy("breast_mri", "MR", _study_uid(paths[0]), paths)


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _sr_file(orthanc: Orthanc, instance: dict[str, Any], directory: Path) -> Path:
    with orthanc.rest() as client:
        data = client.get(f"/instances/{instance['ID']}/file").raise_for_status().content
    path = directory / f"{instance['ID']}.dcm"
    path.write_bytes(data)
    return path


def _dump(path: Path) -> str:
    dump = subprocess.run([str(DSRDUMP), "+Pl", str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    return dump.stdout


@pytest.mark.slow
def test_real_protocols_scored_or_reported_not_available_in_orthanc(
    tmp_path: Path, orthanc: Orthanc, serves: list[_e2e.Serve]
) -> None:
    require_tool(DSRDUMP)
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    install_tiny_bundle(data_dir, TIMED_CARD, export_tiny(tmp_path / "tiny.onnx"))
    config = tmp_path / "appliance.toml"
    node_port = _e2e.write_config(config, data_dir, orthanc, [MR_ROUTE])
    serve = _e2e.Serve(config, node_port, tmp_path / "serve.log")
    serves.append(serve)
    serve.start()

    scans = tmp_path / "scanner"
    single = _study(scans / "single", "single_tpi", 6, seed=61)
    per_series = _study(scans / "series", "series_tpi", 6, seed=62)
    short = _study(scans / "short", "single_tpi", 3, seed=63)
    for study in (single, per_series, short):
        send_study(study, "127.0.0.1", node_port, _e2e.NODE_AE)

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    for study, scored in ((single, True), (per_series, True), (short, False)):
        found = _e2e.wait_for(lambda: orthanc.find_sr(study.study_uid), 180,  # noqa: B023 - called at once
                              f"the SR of the {'scored' if scored else 'refused'} study", serve.tail)
        assert len(found) == 1, found
        path = _sr_file(orthanc, found[0], fetched)
        errors, output = dciodvfy(path)
        assert errors == [], output
        text = _dump(path)
        assert "UNVERIFIED" in text
        if scored:
            phases = re.findall(r'TEXT:\(,,"Contrast Phase"\)="model phase ([^"]+)"', text)
            assert len(phases) == 5 and phases[0].startswith("pre-contrast <- "), text[-3000:]
            assert "120 s <- 'temporal position 3' (95 s)" in phases, phases
            assert "Probability" in text and "AI result not available" not in text
        else:
            assert "AI result not available: the breast mri analysis could not be run" in text
            assert "no phase at or after 210 s" in text
    states = {j["study_uid"]: (j["state"], j["reason"]) for j in _e2e.jobs(data_dir)}
    assert states[single.study_uid][0] == states[per_series.study_uid][0] == "succeeded", states
    assert states[short.study_uid][0] == "failed" and "time window" in states[short.study_uid][1]
    _e2e.wait_for(lambda: _e2e.all_delivered(data_dir), 60, "every delivery to be delivered", serve.tail)
    assert serve.terminate(timeout=30) == 0, serve.tail()
