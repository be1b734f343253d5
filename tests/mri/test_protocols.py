"""Studies as real breast DCE protocols send them (issue 13): any phase count and timing, every encoding.

Every study is built on the header of a real MR image (``tests/mri/_studies.py``) and goes through the
pipeline with a model card that states its phases by time after injection: it is either scored, with the
phases used recorded in the finding (and so in the SR), or refused with a reason naming the times found
and needed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from appliance.errors import StudyIncomplete
from appliance.mri import assemble, run_breast_mri
from appliance.mri._timing import PhaseInfo, PhaseSchedule, plan_phases
from tests.mri._studies import PROTOCOL_ENCODINGS, build_study, case_at
from tests.mri.tiny_engine import CARD, TinyEngine, export_tiny, mri_card

#: the phases the model was trained on: pre-contrast, then these seconds after injection
TIMED_CARD: dict[str, Any] = {**CARD, "post_contrast_times_s": [30.0, 120.0, 210.0, 300.0], "phase_tolerance_s": 30.0}
#: acquisition start of each phase after the pre-contrast one; contrast goes in at 60 s
TIMINGS: dict[int, tuple[float, ...]] = {
    3: (0.0, 90.0, 180.0),  # ends 120 s after injection: refused
    4: (0.0, 100.0, 220.0, 340.0),  # 40, 160, 280 s: 120 and 210 s interpolated
    5: (0.0, 90.0, 180.0, 270.0, 360.0),  # the model's own protocol
    6: (0.0, 90.0, 155.0, 220.0, 285.0, 350.0),  # every 65 s
    8: (0.0, 75.0, 120.0, 165.0, 210.0, 255.0, 300.0, 345.0),  # every 45 s
}
EARLY_ONLY = (0.0, 70.0, 80.0, 90.0, 100.0, 110.0)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> TinyEngine:
    return TinyEngine(export_tiny(tmp_path_factory.mktemp("tiny") / "tiny.onnx"), card=TIMED_CARD)


def _study_uid(datasets: list[Dataset]) -> str:
    return str(datasets[0].StudyInstanceUID)


@pytest.mark.parametrize("count", sorted(TIMINGS))
@pytest.mark.parametrize("encoding", PROTOCOL_ENCODINGS)
def test_protocol_is_scored_with_its_phases_recorded_or_refused(encoding: str, count: int, engine: TinyEngine) -> None:
    datasets = build_study(TIMINGS[count], encoding, seed=count)
    if count == 3:
        with pytest.raises(StudyIncomplete, match=r"does not cover the model's time window: no phase at or after "
                           r"210 s \(tolerance 30 s\); the study has them at 30, 120 s .*; the model needs "
                           r"post-contrast phases at 30, 120, 210, 300 s after injection"):
            run_breast_mri("job-p", _study_uid(datasets), datasets, engine)
        return
    result = run_breast_mri("job-p", _study_uid(datasets), datasets, engine)
    finding = result.findings[0]
    assert len(finding.phases) == 5, finding.phases
    assert finding.phases[0].startswith("pre-contrast <- ")
    assert [line.split(" <- ")[0] for line in finding.phases[1:]] == ["30 s", "120 s", "210 s", "300 s"]
    interpolated = [line for line in finding.phases if " + " in line]
    if count == 4:  # 40, 160, 280 s (or 30, 150, 270 s from the first post-contrast phase): one or two mixed
        assert interpolated and all(re.search(r"0\.\d\d x .* \+ 0\.\d\d x ", line) for line in interpolated)
    else:
        assert not interpolated, finding.phases
    assert finding.kinetic_curve == case_at(TIMINGS[count]).curve == "washout"
    assert any(note.startswith("phases timed by") for note in result.notes), result.notes
    assert len(engine.calls[-1]["dce"][0]) == 5


@pytest.mark.parametrize("encoding", ["single_tpi", "series_time", "enhanced"])
def test_all_early_protocol_is_refused_naming_the_times(encoding: str, engine: TinyEngine) -> None:
    datasets = build_study(EARLY_ONLY, encoding)
    with pytest.raises(StudyIncomplete, match=r"no phase at or after 120 s .* the study has them at (10|30), .* "
                       r"the model needs post-contrast phases at 30, 120, 210, 300 s"):
        run_breast_mri("job-e", _study_uid(datasets), datasets, engine)


def test_eight_phases_use_the_phases_at_the_model_times(engine: TinyEngine) -> None:
    """Contrast/Bolus Start Time present: 15, 60, ... 285 s after injection; the nearest within 30 s is used."""
    datasets = build_study(TIMINGS[8], "series_time")  # no start time: relative to the first post phase
    result = run_breast_mri("job-8", _study_uid(datasets), datasets, engine)
    assert result.findings[0].phases == (
        "pre-contrast <- 'pre'", "30 s <- 'post1' (30 s)", "120 s <- 'post3' (120 s)",
        "210 s <- 'post5' (210 s)", "300 s <- 'post7' (300 s)")
    used = {s.series_uid for s in result.findings[0].sources}
    kept = {str(ds.SeriesInstanceUID) for ds in datasets if ds.SeriesDescription in ("pre", "post1", "post3", "post5",
                                                                                      "post7")}
    assert used == kept, "the SR's image library holds the instances of the phases used, and only those"


def test_interpolation_is_linear_in_time() -> None:
    """A model phase between two study phases is their time-weighted mean (checked on the arrays)."""
    datasets = build_study(TIMINGS[4], "single_tpi")
    study = assemble(datasets)
    plan = plan_phases(study.phases, PhaseSchedule.from_card(mri_card(TIMED_CARD)))  # type: ignore[arg-type]
    assert plan.reference == "Contrast/Bolus Start Time" and plan.source == "acquisition"
    assert dict(plan.post_times_s) == pytest.approx({1: 40.0, 2: 160.0, 3: 280.0})
    (a, wa), (b, wb) = plan.phases[2].parts  # 120 s between 40 and 160 s
    assert (a, b) == (1, 2) and wa == pytest.approx(1 / 3) and wb == pytest.approx(2 / 3)
    from appliance.mri._timing import apply_plan

    mapped = apply_plan(study.array, plan)
    np.testing.assert_allclose(mapped[2], study.array[1] / 3 + 2 * study.array[2] / 3, rtol=1e-5)


def _info(label: str, t: float | None, contrast: bool | None, start: float | None = None) -> PhaseInfo:
    return PhaseInfo(label, "1.2.3", t, None, None, contrast, start)


def test_pre_contrast_phase_is_the_last_without_agent() -> None:
    schedule = PhaseSchedule((30.0, 120.0))
    phases = [_info("localizer-like pre", 0, False), _info("pre", 50, False), _info("post1", 100, True, 70),
              _info("post2", 190, True, 70), _info("t1 late", 900, False)]
    plan = plan_phases(phases, schedule)
    assert plan.phases[0].parts == ((1, 1.0),)
    assert plan.used() == [1, 2, 3]
    assert any("left out earlier pre-contrast phase(s): 'localizer-like pre'" in n for n in plan.notes)
    assert any("without contrast agent after the injection: 't1 late'" in n for n in plan.notes)


def test_no_pre_contrast_phase_is_refused() -> None:
    phases = [_info("post1", 100, True), _info("post2", 190, True)]
    plan = plan_phases(phases, PhaseSchedule((30.0,)))  # all with agent: the earliest is taken as pre
    assert plan.phases[0].parts == ((0, 1.0),) and "the earliest is taken as pre-contrast" in plan.notes[0]
    with pytest.raises(StudyIncomplete, match=r"1 phase found \('post1'\); the model needs a pre-contrast phase"):
        plan_phases(phases[:1], PhaseSchedule((30.0,)))


def test_long_gap_is_not_interpolated() -> None:
    phases = [_info("pre", 0, False), _info("post1", 90, True, 60), _info("post2", 660, True, 60)]
    with pytest.raises(StudyIncomplete, match=r"no phase near 120 s: the nearest lie 570 s apart \(30 and 600 s\)"):
        plan_phases(phases, PhaseSchedule((30.0, 120.0, 210.0)))


def test_untimed_phase_is_refused() -> None:
    phases = [_info("pre", 0, False), _info("post1", None, True)]
    with pytest.raises(StudyIncomplete, match=r"phase 'post1' has no Acquisition Date/Time, Trigger Time or Temporal"):
        plan_phases(phases, PhaseSchedule((30.0,)))


@pytest.mark.parametrize(("card", "message"), [
    ({"post_contrast_times_s": [120, 30]}, r"must be a non-empty list of increasing seconds"),
    ({"post_contrast_times_s": [30, 120], "phase_count": 5}, r"phase_count 5 must be 1 \+ the 2"),
    ({"post_contrast_times_s": ["soon"]}, r"post_contrast_times_s \['soon'\]"),
])
def test_bad_card_timing_is_rejected(card: dict[str, Any], message: str) -> None:
    """At install (the typed card), never when a job runs."""
    from engines.errors import BundleRejected

    with pytest.raises(BundleRejected, match=message):
        mri_card({**CARD, **card})


def test_old_card_with_only_phase_count_keeps_working(tmp_path: Path) -> None:
    engine = TinyEngine(export_tiny(tmp_path / "old.onnx"))  # CARD: phase_count 5, no times
    datasets = build_study(TIMINGS[5], "series_tpi")
    assert run_breast_mri("job-o", _study_uid(datasets), datasets, engine).findings[0].phases == ()
    six = build_study(TIMINGS[6], "series_tpi")
    with pytest.raises(StudyIncomplete, match=r"6 phase\(s\) found .* but the model needs 5"):
        run_breast_mri("job-o6", _study_uid(six), six, engine)


def test_descending_slices_give_the_same_input(engine: TinyEngine) -> None:
    up = build_study(TIMINGS[6], "single_tpi")
    down = build_study(TIMINGS[6], "single_tpi", descending=True)
    run_breast_mri("job-u", _study_uid(up), up, engine)
    run_breast_mri("job-d", _study_uid(down), down, engine)
    np.testing.assert_array_equal(engine.calls[-1]["dce"], engine.calls[-2]["dce"])


def test_phase_with_a_different_slice_count_is_a_clear_error(engine: TinyEngine) -> None:
    datasets = build_study(TIMINGS[6], "series_tpi")
    victim = next(ds for ds in datasets if ds.SeriesDescription == "post3" and ds.SliceLocation == "9.0")
    datasets.remove(victim)
    with pytest.raises(StudyIncomplete, match=r"\(post3\), phase 'temporal position 4': 15 slices, phase "
                       r"'temporal position 1' has 16"):
        run_breast_mri("job-s", _study_uid(datasets), datasets, engine)


def _copy_series(datasets: list[Dataset], description: str, image_type: list[str]) -> list[Dataset]:
    uid = generate_uid()
    out = []
    for ds in datasets:
        if ds.SeriesDescription != "post2":
            continue
        extra = copy.deepcopy(ds)
        extra.SeriesInstanceUID, extra.SOPInstanceUID = uid, generate_uid()
        extra.SeriesDescription, extra.ImageType, extra.SeriesNumber = description, image_type, 99
        extra.AcquisitionTime = "091500"
        out.append(extra)
    return out


@pytest.mark.parametrize(("description", "image_type", "why"), [
    ("post2 - pre", ["DERIVED", "PRIMARY", "SUBTRACTION"], r"a subtraction series \(Image Type DERIVED\\PRIMARY\\SUBTRACTION\)"),
    ("SUB post2", ["ORIGINAL", "PRIMARY", "OTHER"], r"its Series Description matches the derived-series rule"),
    ("post2 motion corrected", ["DERIVED", "SECONDARY", "OTHER"], r"a derived series .* beside original ones"),
])
def test_subtraction_and_derived_series_are_left_out_with_a_note(
    engine: TinyEngine, description: str, image_type: list[str], why: str
) -> None:
    datasets = build_study(TIMINGS[5], "series_time")
    plain = run_breast_mri("job-a", _study_uid(datasets), datasets, engine)
    extra = _copy_series(datasets, description, image_type)
    result = run_breast_mri("job-b", _study_uid(datasets), datasets + extra, engine)
    assert result.findings[0].probability == plain.findings[0].probability
    assert any(re.search(rf"left out series [0-9.]+ \({re.escape(description)}\): {why}", n) for n in result.notes), \
        result.notes


def _philips(datasets: list[Dataset]) -> list[Dataset]:
    """The study as a Philips scanner stores it: per-phase Rescale Slope and private Scale Slope (2005,100E).

    Philips writes stored values SV with Rescale Slope RS / Intercept RI per image and a private Scale
    Slope SS in the block of private creator "Philips MR Imaging DD 001"; the floating-point value
    FP = (SV * RS + RI) / (RS * SS) is the one comparable between images.
    """
    scales = {"pre": (1.25, 0.8), "post1": (0.7, 1.3), "post2": (1.1, 0.6), "post3": (0.9, 1.1), "post4": (1.4, 0.9)}
    for ds in datasets:
        rs, ss = scales[ds.SeriesDescription]
        ri = -20.0
        signal = ds.pixel_array.astype(np.float64)
        ds.PixelData = np.round((signal * rs * ss - ri) / rs).astype(np.int16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{rs}", f"{ri}", "normalized"
        ds.Manufacturer, ds.ManufacturerModelName = "Philips Medical Systems", "Ingenia"
        block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        block.add_new(0x0D, "FL", 0.0)  # Scale Intercept
        block.add_new(0x0E, "FL", ss)  # Scale Slope
    return datasets


def test_philips_scale_slope_puts_phases_on_one_scale(tmp_path: Path) -> None:
    reference = build_study(TIMINGS[5], "series_time")
    plain = TinyEngine(export_tiny(tmp_path / "p.onnx"), card=TIMED_CARD)
    run_breast_mri("job-r", _study_uid(reference), reference, plain)
    philips = _philips(build_study(TIMINGS[5], "series_time"))
    run_breast_mri("job-n", _study_uid(philips), philips, plain)  # Rescale only: each phase on its own scale
    scaled = TinyEngine(export_tiny(tmp_path / "s.onnx"), card={**TIMED_CARD, "philips_scale_slope": True})
    run_breast_mri("job-s", _study_uid(philips), philips, scaled)
    expected = plain.calls[0]["dce"]
    np.testing.assert_allclose(scaled.calls[-1]["dce"], expected, atol=0.01)
    assert np.abs(plain.calls[-1]["dce"] - expected).max() > 0.2, "without Scale Slope the phases differ in scale"
    from appliance.mri.pipeline import prepare_inputs

    written = tmp_path / "philips.dcm"
    philips[0].save_as(written, enforce_file_format=True)
    header = pydicom.dcmread(written)
    assert header[0x2005, 0x0010].value == "Philips MR Imaging DD 001" and header[0x2005, 0x100E].VR == "FL"
    with pytest.raises(StudyIncomplete, match=r"Philips Scale Slope \(2005,100E\) 0.0 with Rescale Slope"):
        header[0x2005, 0x100E].value = 0.0
        prepare_inputs([header, *philips[1:]], mri_card({**TIMED_CARD, "philips_scale_slope": True}))


def test_scored_study_sr_records_the_phases_and_passes_dciodvfy(tmp_path: Path, engine: TinyEngine) -> None:
    import subprocess

    from appliance.reports import DeviceInfo, build_reports
    from tests.peers import DSRDUMP, dciodvfy, require_tool

    require_tool(DSRDUMP)
    paths = []
    for ds in build_study(TIMINGS[6], "series_tpi"):
        path = tmp_path / "study" / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    result = run_breast_mri("J00000000006", str(pydicom.dcmread(paths[0]).StudyInstanceUID), paths, engine)
    objects = build_reports(result, tmp_path / "outbox", DeviceInfo.from_serial("SN-P"), captures=False)
    errors, output = dciodvfy(objects[0])
    assert errors == [], output
    dump = subprocess.run([str(DSRDUMP), "+Pl", str(objects[0])], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    phases = re.findall(r'TEXT:\(,,"Contrast Phase"\)="model phase ([^"]+)"', dump.stdout)
    assert phases == list(result.findings[0].phases) and len(phases) == 5, dump.stdout[-3000:]
    assert "120 s <- 'temporal position 3' (95 s)" in phases
    used = {s.sop_instance_uid for s in result.findings[0].sources}
    assert len(used) == 5 * 16, "the image library references the 5 phases used (16 slices each), not all 6"


def test_missing_series_of_a_per_series_dynamic_names_the_temporal_position(engine: TinyEngine) -> None:
    """Per-series Temporal Position Identifiers count across the whole dynamic: a lost series is named."""
    datasets = [ds for ds in build_study(TIMINGS[6], "series_tpi") if ds.SeriesDescription != "post3"]
    with pytest.raises(StudyIncomplete, match=r"missing temporal position\(s\) 4 of 6 \(Number of Temporal Positions\)"):
        run_breast_mri("job-m", _study_uid(datasets), datasets, engine)


def _manifest(card_extra: dict[str, Any]) -> dict[str, Any]:
    card = {**CARD, **card_extra}
    return {"format": 1, "task": "breast_mri", "version": "1.0.0", "precision": "fp32",
            "backend": {"name": "onnxruntime"}, "model_file": "m.onnx", "model_card": card,
            "golden": {"file": "g.npz"}, "files": {"m.onnx": "0" * 64, "g.npz": "1" * 64}}


@pytest.mark.parametrize(("extra", "message"), [
    ({"post_contrast_times_s": [30, 30]}, r"post_contrast_times_s \[30, 30\] must be a non-empty list of increasing"),
    ({"post_contrast_times_s": []}, r"post_contrast_times_s \[\] must be"),
    ({"post_contrast_times_s": [30, 120], "phase_tolerance_s": -1}, r"phase_tolerance_s -1 must be a number >= 0"),
    ({"post_contrast_times_s": [30, 120], "phase_count": 5}, r"phase_count 5 must be 1 \+ the 2 post_contrast_times_s"),
])
def test_bundle_card_phase_times_are_checked_at_install(extra: dict[str, Any], message: str) -> None:
    from engines.errors import BundleRejected
    from engines.manifest import Manifest

    assert Manifest.from_dict(_manifest({"post_contrast_times_s": [30, 120, 210, 300], "phase_count": 5}))
    with pytest.raises(BundleRejected, match=message):
        Manifest.from_dict(_manifest(extra))
