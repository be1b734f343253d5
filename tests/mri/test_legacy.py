"""Legacy Converted Enhanced MR (highdicom's ``legacy`` module from classic MR): stored, routed, scored."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import Config
from appliance.mri import run_breast_mri
from appliance.mri.pipeline import job_instance_paths
from appliance.routing import route_open_series
from dicom_node._storage_classes import STORAGE_SOP_CLASSES
from tests.dicom_node._node import running_node, storescu
from tests.mri._studies import build_study
from tests.mri.test_protocols import TIMED_CARD, TIMINGS
from tests.mri.tiny_engine import TinyEngine, export_tiny

LEGACY_MR = "1.2.840.10008.5.1.4.1.1.4.4"


def test_legacy_converted_study_is_stored_routed_and_scored(tmp_path: Path) -> None:
    assert LEGACY_MR in STORAGE_SOP_CLASSES
    (legacy,) = build_study(TIMINGS[6], "legacy")
    assert legacy.SOPClassUID == LEGACY_MR and int(legacy.NumberOfFrames) == 6 * 16
    path = tmp_path / "legacy.dcm"
    legacy.save_as(path, enforce_file_format=True)
    with running_node(tmp_path / "var") as node:
        sent = storescu(node.port, [path], "STORESCU", "APPLIANCE", "-R")  # -R: propose the file's own class
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert node.instance_count() == 1
        routes = route_open_series(node.store, Config().routes)
        assert list(routes.values()) == [1], "the default MR route (breast_mri) takes the series"
        paths = job_instance_paths(node.store, [str(legacy.SeriesInstanceUID)])
    engine = TinyEngine(export_tiny(tmp_path / "tiny.onnx"), card=TIMED_CARD)
    result = run_breast_mri("job-l", str(legacy.StudyInstanceUID), paths, engine)
    finding = result.findings[0]
    assert finding.phases[2] == "120 s <- 'temporal position 3' (95 s)"
    assert [s.sop_class_uid for s in finding.sources] == [LEGACY_MR]
    assert finding.kinetic_curve == "washout"


def test_legacy_and_enhanced_give_the_same_model_input(tmp_path: Path) -> None:
    engine = TinyEngine(export_tiny(tmp_path / "tiny.onnx"), card=TIMED_CARD)
    for encoding in ("single_tpi", "legacy"):
        datasets = build_study(TIMINGS[5], encoding)
        run_breast_mri(f"job-{encoding}", str(datasets[0].StudyInstanceUID), datasets, engine)
    assert engine.calls[0]["dce"].tobytes() == engine.calls[1]["dce"].tobytes()


@pytest.mark.parametrize("keyword", ["TemporalPositionIdentifier"])
def test_legacy_without_temporal_positions_is_ordered_by_time(tmp_path: Path, keyword: str) -> None:
    from tests.mri import _studies

    classic = _studies._classic(_studies.case_at(TIMINGS[5]), "single_tpi", 0, False)
    for ds in classic:
        delattr(ds, keyword)
        del ds.NumberOfTemporalPositions
    import highdicom as hd
    from pydicom.uid import generate_uid

    legacy = hd.legacy.LegacyConvertedEnhancedMRImage(classic, generate_uid(), 7, generate_uid(), 1)
    engine = TinyEngine(export_tiny(tmp_path / "tiny.onnx"), card=TIMED_CARD)
    result = run_breast_mri("job-t", str(legacy.StudyInstanceUID), [legacy], engine)
    assert result.findings[0].phases[1] == "30 s <- 'temporal position 2' (30 s)"
