"""The synthetic DCE writer: real MR DICOM that reads back and passes dciodvfy."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from export.synthetic.dce import DceCase, make_case
from export.synthetic.dce_dicom import (
    ENCODINGS,
    ENHANCED_MR_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    encode_case,
    study_identity,
    to_bytes,
    write_case,
)
from tests.peers import DCIODVFY, dciodvfy, require_tool


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_dciodvfy_finds_no_errors(tmp_path: Path, dce_case: DceCase, encoding: str) -> None:
    require_tool(DCIODVFY)
    paths = write_case(dce_case, tmp_path, encoding, study_identity(1))
    # the first and the last instance: pre- and post-contrast
    for path in {paths[0], paths[-1]}:
        errors, output = dciodvfy(path)
        assert errors == [], output
        assert ("EnhancedMRImage" if encoding == "enhanced" else "MRImage") in output


@pytest.mark.parametrize(("encoding", "count", "series", "sop_class"), [
    ("single_series", 80, 1, MR_IMAGE_STORAGE),
    ("series_per_phase", 80, 5, MR_IMAGE_STORAGE),
    ("enhanced", 1, 1, ENHANCED_MR_IMAGE_STORAGE),
])
def test_bytes_read_back(encoded_bytes: dict[str, list[bytes]], encoding: str, count: int, series: int,
                         sop_class: str) -> None:
    datasets = [pydicom.dcmread(io.BytesIO(raw)) for raw in encoded_bytes[encoding]]
    assert len(datasets) == count
    assert len({ds.SeriesInstanceUID for ds in datasets}) == series
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert {ds.SOPClassUID for ds in datasets} == {sop_class}
    assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {"1.2.840.10008.1.2.1"}
    first = datasets[0]
    assert first.PatientName.family_name == "SYNTHETIC" and first.Modality == "MR"
    assert first.PatientAge.endswith("Y") or first.PatientAge == ""


def test_series_per_phase_descriptions_follow_acquisition_time(read_encoding: object) -> None:
    datasets = read_encoding("series_per_phase")  # type: ignore[operator]
    first_time = {}
    for ds in datasets:
        first_time.setdefault(ds.SeriesDescription, ds.AcquisitionTime)
    assert sorted(first_time, key=first_time.__getitem__) == ["pre", "post1", "post2", "post3", "post4"]


def test_enhanced_frames_carry_temporal_position(read_encoding: object) -> None:
    (ds,) = read_encoding("enhanced")  # type: ignore[operator]
    assert ds.NumberOfFrames == 80
    indices = [item.FrameContentSequence[0].TemporalPositionIndex for item in ds.PerFrameFunctionalGroupsSequence]
    assert sorted(set(indices)) == [1, 2, 3, 4, 5] and indices.count(3) == 16
    assert ds.pixel_array.shape == (80, 64, 64)


def test_encoding_is_deterministic() -> None:
    a = [to_bytes(ds) for ds in encode_case(make_case(np.random.default_rng(4), False), "enhanced", study_identity(4))]
    b = [to_bytes(ds) for ds in encode_case(make_case(np.random.default_rng(4), False), "enhanced", study_identity(4))]
    assert a == b


def test_unknown_encoding_is_rejected(dce_case: DceCase) -> None:
    with pytest.raises(ValueError, match=r"encoding 'dicomdir' is not one of single_series, series_per_phase, enhanced"):
        encode_case(dce_case, "dicomdir")  # type: ignore[arg-type]
