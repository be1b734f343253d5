"""Report objects judged by real tools: dciodvfy (zero errors), dsrdump, highdicom read-back."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from appliance.errors import ReportError
from appliance.findings import Finding, HeatMap, StudyResult
from appliance.reports import DeviceInfo, build_reports
from appliance.reports.uids import device_uid
from tests.peers import DSRDUMP, dciodvfy, require_tool
from tests.reports._cases import CASES, mri, pathology

DEVICE = DeviceInfo.from_serial("SN-TEST-1", name="APPLIANCE")
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID")


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[StudyResult, list[Path]]:
    result = CASES[request.param](tmp_path)
    return result, build_reports(result, tmp_path / "outbox", DEVICE)


def _by_class(paths: list[Path]) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        out.setdefault(ds.SOPClassUID, []).append(ds)
    return out


def test_every_object_passes_dciodvfy_and_sr_parses_with_dsrdump(case: tuple[StudyResult, list[Path]]) -> None:
    require_tool(DSRDUMP)
    result, paths = case
    objects = _by_class(paths)
    assert len(objects[SR_CLASS]) == 1
    assert len(objects[SC_CLASS]) == len(result.findings)
    assert len(objects.get(SEG_CLASS, [])) == sum(f.heat_map is not None for f in result.findings)
    for path in paths:
        errors, output = dciodvfy(path)
        assert errors == [], output
        assert path.name == f"{pydicom.dcmread(path).SOPInstanceUID}.dcm"
    sr_path = next(p for p in paths if pydicom.dcmread(p).SOPClassUID == SR_CLASS)
    dump = subprocess.run([str(DSRDUMP), str(sr_path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and "UNVERIFIED" in dump.stdout
    assert not list(paths[0].parent.glob(".tmp-*")), "a temporary file was left in the outbox"
    for sc in objects[SC_CLASS]:
        assert (list(sc.ImageType[:2]), sc.BurnedInAnnotation, sc.ConversionType) == (["DERIVED", "SECONDARY"], "YES", "WSD")


def test_objects_inherit_patient_and_study_and_start_new_series(case: tuple[StudyResult, list[Path]]) -> None:
    result, paths = case
    source = pydicom.dcmread(result.findings[0].sources[0].path, stop_before_pixels=True)
    series = set()
    engine_uids = {device_uid(f.engine.manifest_sha256) for f in result.findings}
    for path in paths:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == result.study_uid
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        series.add(ds.SeriesInstanceUID)
        for keyword in PATIENT_STUDY:
            assert str(ds.get(keyword, "")) == str(source.get(keyword, "")), keyword
        items = list(ds.ContributingEquipmentSequence)
        engine_items = [i for i in items if "DeviceUID" in i]
        assert {i.PurposeOfReferenceCodeSequence[0].CodeValue for i in engine_items} == {"109102"}
        assert {i.DeviceUID for i in engine_items} <= engine_uids
        assert {i.SoftwareVersions for i in engine_items} <= {f.engine.version for f in result.findings}
    assert engine_uids == {i.DeviceUID for i in pydicom.dcmread(paths[0]).ContributingEquipmentSequence if "DeviceUID" in i}
    assert len(series) == 2 + any(f.heat_map is not None for f in result.findings)  # SR, [SEG], SC: a series each


def test_sr_content_says_what_was_found(case: tuple[StudyResult, list[Path]]) -> None:
    result, paths = case
    finding = result.findings[0]
    sr_ds = next(ds for ds in map(pydicom.dcmread, paths) if ds.SOPClassUID == SR_CLASS)
    assert (sr_ds.CompletionFlag, sr_ds.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    report = cast(hd.sr.MeasurementReport, sr.content)
    groups = report.get_observer_contexts()
    assert groups[0].observer_type == codes.DCM.Device
    observer = groups[0].observer_identifying_attributes
    assert isinstance(observer, hd.sr.DeviceObserverIdentifyingAttributes) and observer.uid == DEVICE.uid
    group = report.get_image_measurement_groups()[0]
    assert group.finding_type == {"pathology": codes.SCT.Carcinoma, "breast_mri": codes.SCT.Metastasis}[finding.pipeline]
    items = group[0].ContentSequence
    algorithm = {i.name.meaning: i.value for i in items if i.name.meaning.startswith("Algorithm")}
    assert algorithm["Algorithm Name"] == finding.engine.name
    assert algorithm["Algorithm Version"] == finding.engine.version
    assert str(group.tracking_uid).startswith("2.25.")
    assert group.get_measurements()[0].value == pytest.approx(finding.probability, abs=1e-6)
    evaluation = group.get_qualitative_evaluations()[0]
    assert evaluation.value == (codes.SCT.Present if finding.positive else codes.SCT.Absent)
    assert {s.referenced_sop_instance_uid for s in group.source_images} == {s.sop_instance_uid for s in finding.sources}
    text = [i.TextValue for i in sr_ds.ContentSequence[-1].ContentSequence]
    assert "Unverified machine result" in text[0] and "NOT FOR CLINICAL USE" in text[0]
    assert ("POSITIVE" if finding.positive else "negative") in text[0]


def test_heat_map_segmentation_covers_the_level(tmp_path: Path) -> None:
    result = pathology(tmp_path, 0.9)
    paths = build_reports(result, tmp_path / "outbox", DEVICE, captures=False)
    seg = hd.seg.segread(next(p for p in paths if pydicom.dcmread(p).SOPClassUID == SEG_CLASS))
    heat_map = result.findings[0].heat_map
    assert heat_map is not None
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    assert (seg.TotalPixelMatrixRows, seg.TotalPixelMatrixColumns) == heat_map.scores.shape
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert float(spacing[0]) * seg.TotalPixelMatrixRows == pytest.approx(0.0005 * 256 * 3)
    level = pydicom.dcmread(heat_map.level_source.path, stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == level.FrameOfReferenceUID
    pixels = seg.get_total_pixel_matrix(combine_segments=False)[..., 0]
    expected = np.nan_to_num(heat_map.scores, nan=0.0)
    assert np.allclose(pixels, expected, atol=1 / 255 + 1e-6)


def test_rebuilding_gives_the_same_files_and_a_new_engine_version_new_ones(tmp_path: Path) -> None:
    first = build_reports(mri(tmp_path, 0.7, "MR_small.dcm"), tmp_path / "a", DEVICE)
    again = build_reports(mri(tmp_path, 0.7, "MR_small.dcm"), tmp_path / "b", DEVICE)
    newer = build_reports(mri(tmp_path, 0.7, "MR_small.dcm", version="1.1.0"), tmp_path / "c", DEVICE)
    assert [p.name for p in first] == [p.name for p in again]
    assert not {p.name for p in first} & {p.name for p in newer}
    uid_of = {pydicom.dcmread(p).SOPInstanceUID for p in first}
    assert uid_of == {p.stem for p in first}


def test_a_source_that_is_not_what_the_finding_says_is_refused(tmp_path: Path) -> None:
    result = mri(tmp_path, 0.7, "MR_small.dcm")
    finding = result.findings[0]
    wrong = type(finding.sources[0])(
        finding.sources[0].study_uid, "1.2.3", finding.sources[0].sop_instance_uid, finding.sources[0].sop_class_uid,
        finding.sources[0].path,
    )
    bad = StudyResult(result.job_id, result.study_uid, (Finding("breast_mri", 0.7, 0.5, finding.engine, (wrong,)),))
    with pytest.raises(ReportError, match="has SeriesInstanceUID .* the finding names '1.2.3'"):
        build_reports(bad, tmp_path / "outbox", DEVICE)
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").iterdir())


def _sr_text(path: Path) -> str:
    ds = pydicom.dcmread(path)
    found: list[str] = []

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if "TextValue" in item:
                found.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return "\n".join(found)


def test_a_heat_map_that_does_not_cover_the_level_is_left_out_and_the_sr_says_why(tmp_path: Path) -> None:
    result = pathology(tmp_path, 0.9)
    finding = result.findings[0]
    assert finding.heat_map is not None
    small = HeatMap(np.zeros((2, 2), np.float32), 256, finding.heat_map.level_source, 768, 1000, (0.0005, 0.0005))
    bad = StudyResult(result.job_id, result.study_uid, (Finding("pathology", 0.9, 0.5, finding.engine,
                                                                finding.sources, heat_map=small),))
    paths = build_reports(bad, tmp_path / "outbox", DEVICE)
    classes = [pydicom.dcmread(p).SOPClassUID for p in paths]
    assert classes == [SR_CLASS, SC_CLASS], "the SR and the capture still go out, the SEG is left out"
    assert dciodvfy(paths[0])[0] == []
    text = _sr_text(paths[0])
    assert "heat map (Segmentation) of finding 1 was not produced" in text
    assert "heat map grid (2, 2) does not cover the level" in text


def test_a_slide_without_frame_of_reference_gets_its_sr_without_a_seg(tmp_path: Path) -> None:
    """As OrthancWSIDicomizer writes it: no Frame of Reference UID, so highdicom cannot tile a SEG over it."""
    result = pathology(tmp_path, 0.8)
    level = result.findings[0].sources[0]
    ds = pydicom.dcmread(level.path)
    del ds.FrameOfReferenceUID
    ds.save_as(level.path)
    paths = build_reports(result, tmp_path / "outbox", DEVICE)
    assert [pydicom.dcmread(p).SOPClassUID for p in paths] == [SR_CLASS, SC_CLASS]
    assert dciodvfy(paths[0])[0] == []
    assert "Frame of Reference" in _sr_text(paths[0])


def test_a_result_without_findings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="job job-empty has no findings"):
        build_reports(StudyResult("job-empty", "1.2.3", ()), tmp_path, DEVICE)


def test_an_undecodable_key_slice_skips_only_the_optional_capture(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = mri(tmp_path, 0.7, "MR_truncated.dcm")  # header fine, pixel data short
    paths = build_reports(result, tmp_path / "outbox", DEVICE)
    assert [pydicom.dcmread(p).SOPClassUID for p in paths] == [SR_CLASS]
    assert dciodvfy(paths[0])[0] == []
    assert "secondary capture of finding 1 left out" in caplog.text
    assert "secondary capture of finding 1 was not produced" in _sr_text(paths[0])
