"""The breast-MRI pipeline end to end with a tiny ONNX engine, and its preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.errors import StudyIncomplete
from appliance.findings import StudyResult
from appliance.mri import ModelGeometry, assemble, preprocess, run_breast_mri, set_clinical
from appliance.mri._preprocess import crop_or_pad, normalize, resample
from appliance.state import StateStore
from export.synthetic.dce import DceCase, make_case, relative_signal
from export.synthetic.dce_dicom import ENCODINGS, stored_signal, study_identity, write_case
from tests.mri.conftest import Reader
from engines.errors import BundleRejected
from tests.mri.tiny_engine import CARD, TinyEngine, export_tiny, mri_card


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture
def engine(tiny_onnx: Path) -> TinyEngine:
    return TinyEngine(tiny_onnx)


def test_three_encodings_give_the_same_probability(tmp_path: Path, dce_case: DceCase, engine: TinyEngine) -> None:
    ident = study_identity(3)
    results: dict[str, StudyResult] = {}
    for encoding in ENCODINGS:
        paths = write_case(dce_case, tmp_path / encoding, encoding, ident)
        results[encoding] = run_breast_mri(f"job-{encoding}", ident.study_uid, paths, engine)
    probabilities = {e: r.findings[0].probability for e, r in results.items()}
    assert len(set(probabilities.values())) == 1, probabilities
    for earlier in engine.calls[1:]:
        for name in ("dce", "clinical"):
            np.testing.assert_array_equal(earlier[name], engine.calls[0][name])
    finding = results["enhanced"].findings[0]
    assert finding.pipeline == "breast_mri" and finding.threshold == CARD["threshold"]
    assert finding.kinetic_curve == dce_case.curve
    assert finding.engine.task == "breast_mri" and finding.engine.name == CARD["name"] and finding.engine.demo
    assert len(finding.sources) == 1 and finding.sources[0].path.is_file()
    assert len(results["single_series"].findings[0].sources) == 80
    assert {s.study_uid for s in results["series_per_phase"].findings[0].sources} == {ident.study_uid}


def test_model_input_matches_training_normalization(read_encoding: Reader, dce_case: DceCase, engine: TinyEngine) -> None:
    """The appliance's preprocessing equals export.synthetic.dce.relative_signal on the same signal."""
    run_breast_mri("job-x", "1.2.3", read_encoding("enhanced"), engine)
    dce = engine.calls[-1]["dce"]
    assert dce.shape == (1, 5, 16, 64, 64) and dce.dtype == np.float32
    np.testing.assert_allclose(dce[0], relative_signal(stored_signal(dce_case)), atol=1e-6)


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_kinetic_curve_of_synthetic_lesions(read_encoding: Reader, engine: TinyEngine, seed: int) -> None:
    from export.synthetic.dce_dicom import encode_case

    case = make_case(np.random.default_rng(seed), positive=seed % 2 == 0)
    result = run_breast_mri("job-k", "1.2.3", encode_case(case, "enhanced"), engine)
    assert result.findings[0].kinetic_curve == case.curve


def test_sidecar_clinical_values_reach_the_engine(tmp_path: Path, read_encoding: Reader, engine: TinyEngine) -> None:
    store = StateStore.for_data_dir(tmp_path / "var")
    datasets = read_encoding("single_series")
    before = run_breast_mri("job-a", datasets[0].StudyInstanceUID, datasets, engine, store)
    set_clinical(store, datasets[0].AccessionNumber, {"er": 1, "her2": 1, "ki67": 60, "grade": 3}, actor="test")
    after = run_breast_mri("job-b", datasets[0].StudyInstanceUID, read_encoding("single_series"), engine, store)
    first, second = engine.calls[-2]["clinical"][0], engine.calls[-1]["clinical"][0]
    np.testing.assert_allclose(second[1:5], [1.0, 1.0, 0.6, 1.0])
    np.testing.assert_array_equal(second[6:], 0.0)
    np.testing.assert_array_equal(first[6:], 1.0)
    assert before.findings[0].probability != after.findings[0].probability
    assert any("missing" in note for note in before.notes)


def test_incomplete_study_ends_the_job_with_a_reason(read_encoding: Reader, engine: TinyEngine) -> None:
    datasets = [ds for ds in read_encoding("series_per_phase") if ds.SeriesDescription != "post4"]
    with pytest.raises(StudyIncomplete, match=r"4 phase\(s\) found .* the model needs 5"):
        run_breast_mri("job-c", "1.2.3", datasets, engine)
    assert engine.calls == []


def test_unreadable_file_is_named(tmp_path: Path, engine: TinyEngine) -> None:
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not dicom")
    with pytest.raises(StudyIncomplete, match=r"instance file broken.dcm cannot be read as DICOM"):
        run_breast_mri("job-d", "1.2.3", [bad], engine)


def test_resampling_to_the_card_spacing(read_encoding: Reader) -> None:
    study = assemble(read_encoding("enhanced"), phase_count=5)
    geometry = ModelGeometry.from_card(mri_card({**CARD, "spacing_mm": [6.0, 3.0, 3.0], "grid": [8, 40, 40],
                                                 "inputs": [{"name": "dce", "shape": ["N", 5, 8, 40, 40], "dtype": "float32"},
                                                            {"name": "clinical", "shape": ["N", 10], "dtype": "float32"}]}))
    prepared = preprocess(study, geometry)
    assert prepared.dce.shape == (5, 8, 40, 40) and prepared.mask.shape == (8, 40, 40)
    coarse = resample(study.array, study.spacing_mm, (6.0, 3.0, 3.0))
    assert coarse.shape == (5, 8, 32, 32)
    # linear interpolation halfway between two voxels is their mean
    np.testing.assert_allclose(coarse[0, 0, 0, 0], study.array[0, 0:2, 0:2, 0:2].mean(), rtol=1e-5)
    same = resample(study.array, study.spacing_mm, study.spacing_mm)
    np.testing.assert_array_equal(same, study.array)


def test_normalize_is_zero_mean_in_the_mask_for_the_pre_phase(dce_case: DceCase) -> None:
    values, mask, s0 = normalize(stored_signal(dce_case))
    assert abs(float(values[0][mask].mean())) < 1e-5 and s0 > 0
    assert np.all(values[:, ~mask] == 0)


def test_crop_or_pad_centres_on_the_mask() -> None:
    array = np.zeros((2, 4, 10, 10), dtype=np.float32)
    mask = np.zeros((4, 10, 10), dtype=bool)
    mask[1:3, 6:9, 6:9] = True
    array[:, mask] = 1.0
    out, out_mask = crop_or_pad(array, mask, (6, 4, 4))
    assert out.shape == (2, 6, 4, 4)
    assert out_mask.sum() == mask.sum() and out[0].sum() == mask.sum()  # nothing of the breast was cut
    assert not out_mask[0].any()  # z padded on both sides


def test_bad_model_card_is_rejected() -> None:
    """At install (the typed card), never when a job runs."""
    with pytest.raises(BundleRejected, match=r"model card needs phase_count, grid"):
        mri_card({"threshold": 0.5})
    with pytest.raises(BundleRejected, match=r"crop 'lungs' is not one of"):
        mri_card({**CARD, "crop": "lungs"})


def test_job_instance_paths_from_the_state_store(tmp_path: Path, dce_case: DceCase, engine: TinyEngine) -> None:
    import pydicom

    from appliance.mri import job_instance_paths

    store = StateStore.for_data_dir(tmp_path / "var")
    paths = write_case(dce_case, tmp_path / "spool", "series_per_phase", study_identity(9))
    with store.atomic() as db:
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            db.table("instances").insert({"sop_instance_uid": ds.SOPInstanceUID, "series_uid": ds.SeriesInstanceUID,
                                          "study_uid": ds.StudyInstanceUID, "path": str(path)})
    series = sorted({pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in paths})
    found = job_instance_paths(store, series)
    assert sorted(found) == sorted(paths)
    result = run_breast_mri("job-s", study_identity(9).study_uid, found, engine, store)
    assert result.findings[0].kinetic_curve == dce_case.curve
    with pytest.raises(StudyIncomplete, match=r"series 1\.2\.3: no stored instances"):
        job_instance_paths(store, ["1.2.3"])
