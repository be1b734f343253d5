"""4-D assembly: the three encodings give the same array; broken studies give clear errors."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from appliance.errors import StudyIncomplete
from appliance.mri import assemble
from export.synthetic.dce import DceCase
from export.synthetic.dce_dicom import ENCODINGS, stored_signal
from tests.mri.conftest import Reader

PHASE_RULES = ("pre", "post1", "post2", "post3", "post4")


def _shuffle_frames(ds: Dataset, seed: int) -> Dataset:
    """Permute an enhanced instance's frames together with their per-frame functional groups."""
    order = list(range(int(ds.NumberOfFrames)))
    random.Random(seed).shuffle(order)
    pixels = ds.pixel_array
    ds.PerFrameFunctionalGroupsSequence = [ds.PerFrameFunctionalGroupsSequence[i] for i in order]
    ds.PixelData = np.ascontiguousarray(pixels[order]).tobytes()
    return ds


def _drop_frames(ds: Dataset, keep: list[int]) -> Dataset:
    pixels = ds.pixel_array
    ds.PerFrameFunctionalGroupsSequence = [ds.PerFrameFunctionalGroupsSequence[i] for i in keep]
    ds.NumberOfFrames = len(keep)
    ds.PixelData = np.ascontiguousarray(pixels[keep]).tobytes()
    return ds


def _tpi(ds: Dataset) -> int:
    if "PerFrameFunctionalGroupsSequence" in ds:
        raise AssertionError("classic instances only")
    return int(ds.TemporalPositionIdentifier)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_each_encoding_assembles_to_the_stored_signal(read_encoding: Reader, dce_case: DceCase, encoding: str) -> None:
    study = assemble(read_encoding(encoding), phase_count=5)
    assert study.encoding == encoding
    assert study.array.dtype == np.float32 and study.array.shape == (5, 16, 64, 64)
    np.testing.assert_array_equal(study.array, stored_signal(dce_case))
    assert study.spacing_mm == pytest.approx((3.0, 1.5, 1.5))
    assert study.phase_times_s == pytest.approx((0.0, 90.0, 180.0, 270.0, 360.0))


def test_three_encodings_give_exactly_the_same_array(read_encoding: Reader) -> None:
    arrays = [assemble(read_encoding(e), phase_count=5).array for e in ENCODINGS]
    assert np.array_equal(arrays[0], arrays[1]) and np.array_equal(arrays[0], arrays[2])


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_shuffled_order_gives_the_same_array(read_encoding: Reader, dce_case: DceCase, encoding: str) -> None:
    datasets = read_encoding(encoding)
    random.Random(3).shuffle(datasets)
    if encoding == "enhanced":
        datasets = [_shuffle_frames(datasets[0], 5)]
    np.testing.assert_array_equal(assemble(datasets, phase_count=5).array, stored_signal(dce_case))


@pytest.mark.parametrize("encoding", ["single_series", "series_per_phase"])
def test_exact_duplicates_are_ignored(read_encoding: Reader, dce_case: DceCase, encoding: str) -> None:
    datasets = read_encoding(encoding)
    resent = [copy.deepcopy(ds) for ds in datasets[5:15]]  # same SOP Instance UID again
    renamed = [copy.deepcopy(ds) for ds in datasets[20:25]]  # same image re-sent under a new UID
    for ds in renamed:
        ds.SOPInstanceUID = generate_uid()
    study = assemble(datasets + resent + renamed, phase_count=5)
    np.testing.assert_array_equal(study.array, stored_signal(dce_case))


def test_same_uid_with_different_content_is_an_error(read_encoding: Reader) -> None:
    datasets = read_encoding("single_series")
    changed = copy.deepcopy(datasets[3])
    changed.PixelData = (changed.pixel_array + 1).astype(np.uint16).tobytes()
    with pytest.raises(StudyIncomplete, match=rf"instance {datasets[3].SOPInstanceUID} was received twice with different content"):
        assemble([*datasets, changed], phase_count=5)


def test_different_image_at_the_same_position_is_an_error(read_encoding: Reader) -> None:
    datasets = read_encoding("single_series")
    other = copy.deepcopy(datasets[3])
    other.SOPInstanceUID = generate_uid()
    other.PixelData = (other.pixel_array + 1).astype(np.uint16).tobytes()
    with pytest.raises(StudyIncomplete, match=r"two different images at slice position"):
        assemble([*datasets, other], phase_count=5)


def test_missing_phase_in_single_series(read_encoding: Reader) -> None:
    datasets = [ds for ds in read_encoding("single_series") if _tpi(ds) != 3]
    with pytest.raises(StudyIncomplete, match=r"series [0-9.]+ \(DCE dynamic\): missing temporal position\(s\) 3 of 5"):
        assemble(datasets, phase_count=5)


def test_missing_phase_series(read_encoding: Reader) -> None:
    datasets = [ds for ds in read_encoding("series_per_phase") if ds.SeriesDescription != "post2"]
    with pytest.raises(StudyIncomplete, match=r"4 phase\(s\) found \('pre', 'post1', 'post3', 'post4'\) but the model needs 5 \(a phase is missing\)"):
        assemble(datasets, phase_count=5)


def test_missing_phase_in_enhanced(read_encoding: Reader) -> None:
    ds = read_encoding("enhanced")[0]
    keep = [i for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence)
            if item.FrameContentSequence[0].TemporalPositionIndex != 3]
    with pytest.raises(StudyIncomplete, match=r"DCE dynamic \(enhanced\)\): missing temporal position\(s\) 3 of 5"):
        assemble([_drop_frames(ds, keep)], phase_count=5)


def test_missing_slice_in_one_phase(read_encoding: Reader) -> None:
    datasets = read_encoding("series_per_phase")
    victim = next(ds for ds in datasets if ds.SeriesDescription == "post3" and ds.InstanceNumber == 7)
    datasets.remove(victim)
    with pytest.raises(StudyIncomplete, match=r"\(post3\), phase 'post3': 15 slices, phase 'pre' has 16"):
        assemble(datasets, phase_count=5)


def _shrink(ds: Dataset) -> None:
    """Make an instance 32x32 (every second pixel, doubled spacing)."""
    pixels = ds.pixel_array[::2, ::2]
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [str(float(v) * 2) for v in ds.PixelSpacing]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


@pytest.mark.parametrize(
    ("encoding", "select", "message"),
    [
        ("series_per_phase", lambda ds: ds.SeriesDescription == "post2",
         r"a phase is missing\); left out series [0-9.]+ \(post2\): orientation \[.*\], matrix 32x32 differs from "
         r"orientation \[.*\], matrix 64x64 of the other series"),
        ("single_series", lambda ds: ds.TemporalPositionIdentifier == 4,
         r"\(DCE dynamic\), phase 'temporal position 4': matrix 32x32 differs from 64x64 of phase 'temporal position 1'"),
    ],
)
def test_phase_with_a_different_matrix(read_encoding: Reader, encoding: str, select: object, message: str) -> None:
    datasets = read_encoding(encoding)
    for ds in datasets:
        if select(ds):  # type: ignore[operator]
            _shrink(ds)
    with pytest.raises(StudyIncomplete, match=message):
        assemble(datasets, phase_count=5)


def test_phase_with_a_different_orientation(read_encoding: Reader) -> None:
    datasets = read_encoding("series_per_phase")
    for ds in datasets:
        if ds.SeriesDescription == "post1":
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    with pytest.raises(StudyIncomplete, match=r"left out series [0-9.]+ \(post1\): orientation \[1.0, 0.0, 0.0, 0.0, 0.0, -1.0\]"):
        assemble(datasets, phase_count=5)


@pytest.mark.parametrize("timing", ["trigger_time", "acquisition_time"])
def test_single_series_without_temporal_positions(read_encoding: Reader, dce_case: DceCase, timing: str) -> None:
    """Without Temporal Position Identifier, Trigger Time or Acquisition Time orders the images per position."""
    datasets = read_encoding("single_series")
    random.Random(11).shuffle(datasets)
    for ds in datasets:
        phase = int(ds.TemporalPositionIdentifier) - 1
        del ds.TemporalPositionIdentifier, ds.NumberOfTemporalPositions
        if timing == "trigger_time":
            ds.TriggerTime = str(phase * 90_000)
            ds.AcquisitionTime = "120000"
    np.testing.assert_array_equal(assemble(datasets, phase_count=5).array, stored_signal(dce_case))


def test_phase_rules_pick_series_by_description(read_encoding: Reader, dce_case: DceCase) -> None:
    datasets = read_encoding("series_per_phase")
    extra = [copy.deepcopy(ds) for ds in datasets if ds.SeriesDescription == "pre"]
    uid = generate_uid()
    for ds in extra:  # a later, unrelated series in the same study
        ds.SeriesInstanceUID, ds.SeriesDescription, ds.SOPInstanceUID = uid, "t2 tse", generate_uid()
        ds.AcquisitionTime = "235900"
    with pytest.raises(StudyIncomplete, match=r"6 phase\(s\) found .* but the model needs 5"):
        assemble(datasets + extra, phase_count=5)
    study = assemble(datasets + extra, phase_count=5, phase_rules=PHASE_RULES)
    np.testing.assert_array_equal(study.array, stored_signal(dce_case))
    assert study.phase_labels == PHASE_RULES
    with pytest.raises(StudyIncomplete, match=r"no series matches phase rule 'post5'"):
        assemble(datasets, phase_count=5, phase_rules=(*PHASE_RULES[:4], "post5"))


def test_series_per_phase_is_ordered_by_acquisition_time(read_encoding: Reader, dce_case: DceCase) -> None:
    """Series numbers and descriptions in the wrong order do not matter; acquisition time does."""
    datasets = read_encoding("series_per_phase")
    for ds in datasets:
        ds.SeriesNumber = 100 - int(ds.SeriesNumber)
        ds.SeriesDescription = "dyn"
    np.testing.assert_array_equal(assemble(datasets, phase_count=5).array, stored_signal(dce_case))


def test_no_mr_images_is_an_error() -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.22", generate_uid()
    with pytest.raises(StudyIncomplete, match=r"no MR Image or Enhanced MR Image instances"):
        assemble([ds], phase_count=5)


def _t2_series(template: list[Dataset]) -> list[Dataset]:
    """A T2 series in the same study: other matrix, one phase."""
    uid = generate_uid()
    t2 = [copy.deepcopy(ds) for ds in template[:16]]
    for ds in t2:
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesDescription = uid, generate_uid(), "t2 tse"
        for keyword in ("TemporalPositionIdentifier", "NumberOfTemporalPositions"):
            if keyword in ds:
                delattr(ds, keyword)
        _shrink(ds)
    return t2


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_other_series_in_the_job_are_left_out(read_encoding: Reader, dce_case: DceCase, encoding: str) -> None:
    datasets = read_encoding(encoding)
    t2 = _t2_series(read_encoding("single_series"))
    study = assemble(datasets + t2, phase_count=5)
    np.testing.assert_array_equal(study.array, stored_signal(dce_case))
    assert study.encoding == encoding
    assert len(study.notes) == 1 and "(t2 tse): orientation" in study.notes[0] and "matrix 32x32" in study.notes[0]
    assert t2[0].SeriesInstanceUID not in study.series_uids


def test_two_dynamic_series_are_an_error(read_encoding: Reader) -> None:
    with pytest.raises(StudyIncomplete, match=r"phase 'temporal position 1' of series [0-9.]+ \(DCE dynamic\) and phase 'temporal position 1' "
                       r"of series [0-9.]+ \(DCE dynamic \(enhanced\)\) were acquired at the same time: two dynamic series"):
        assemble(read_encoding("single_series") + read_encoding("enhanced"), phase_count=5)
