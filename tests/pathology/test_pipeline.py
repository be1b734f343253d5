"""The pathology pipeline end to end on synthetic slides, and its failures on bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from appliance.errors import JobFailed
from appliance.findings import StudyResult
from appliance.pathology import PathologySettings, run_dicom_series, run_slide_file
from export.synthetic.slide import make_slide, write_dicom_wsi
from tests.pathology.conftest import SlideFiles
from tests.pathology.tiny_engines import TinyEngine

Engines = tuple[TinyEngine, TinyEngine]


def _run(files: SlideFiles, fmt: str, engines: Engines, **kw: object) -> StudyResult:
    tile, slide = engines
    if fmt == "tiff":
        return run_slide_file(files.tiff, tile, slide, job_id=f"job-{fmt}", **kw)  # type: ignore[arg-type]
    return run_dicom_series(getattr(files, fmt), tile, slide, job_id=f"job-{fmt}", **kw)  # type: ignore[arg-type]


def test_same_grid_and_scores_across_dicom_jpeg_jpeg2000_and_tiff(tumour_slide: SlideFiles, engines: Engines) -> None:
    results = {fmt: _run(tumour_slide, fmt, engines) for fmt in ("jpeg", "jpeg2000", "tiff")}
    ref = results["jpeg2000"].findings[0]
    assert ref.heat_map is not None and ref.tiles_scored > 20
    for fmt, result in results.items():
        f = result.findings[0]
        assert f.heat_map is not None
        assert np.array_equal(np.isnan(f.heat_map.scores), np.isnan(ref.heat_map.scores)), fmt
        assert f.tiles_scored == ref.tiles_scored
        assert f.probability == pytest.approx(ref.probability, abs=0.02), fmt
        np.testing.assert_allclose(f.heat_map.scores, ref.heat_map.scores, atol=0.05, equal_nan=True)
        assert [(t.x, t.y) for t in f.top_tiles][:1] == [(t.x, t.y) for t in ref.top_tiles][:1]


def test_tumour_slide_scores_above_normal_and_finding_is_complete(
    tumour_slide: SlideFiles, normal_slide: SlideFiles, engines: Engines
) -> None:
    seen: list[tuple[int, int]] = []
    tumour = _run(tumour_slide, "jpeg", engines, progress=lambda d, t: seen.append((d, t)),
                  settings=PathologySettings(batch_size=16))
    normal = _run(normal_slide, "jpeg", engines)
    t, n = tumour.findings[0], normal.findings[0]
    assert t.probability > 0.6 > 0.2 > n.probability
    assert t.positive and not n.positive
    assert t.threshold == 0.5 and t.pipeline == "pathology" and t.engine.task == "pathology_slide"
    # Progress: increasing, in batches of 16, ending at the total.
    assert seen[-1] == (t.tiles_scored, t.tiles_scored)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[0][0] == 16
    hm = t.heat_map
    assert hm is not None and hm.tile_px == 64 and hm.scores.shape == (16, 16)
    assert (hm.level_columns, hm.level_rows) == (1024, 1024)
    assert hm.level_source.sop_instance_uid == str(pydicom.dcmread(tumour_slide.jpeg[1]).SOPInstanceUID)
    top = t.top_tiles
    assert len(top) == 5 and top[0].score >= top[-1].score > 0.9
    assert all(hm.scores[h.y // 64, h.x // 64] == pytest.approx(h.score) for h in top)
    # The tumour's highest tiles lie in the slide's tumour mask.
    s = tumour_slide.slide
    centre = s.tumour_mask[int((top[0].y * 2 + 64) / s.cell), int((top[0].x * 2 + 64) / s.cell)]
    assert centre > 0.5


def test_blank_slide_fails_with_no_tissue(tmp_path: Path, engines: Engines) -> None:
    blank = make_slide(5, 512, 512, False, blobs=0)
    paths = write_dicom_wsi(blank, tmp_path, extras=False)
    with pytest.raises(JobFailed, match="no tissue found: none of the 4x4 tiles has 25% tissue"):
        run_dicom_series(paths, *engines, job_id="blank")


def test_series_without_pyramid_level_fails(tumour_slide: SlideFiles, engines: Engines) -> None:
    label_and_overview = tumour_slide.jpeg[-2:]
    with pytest.raises(JobFailed, match="no usable pyramid level"):
        run_dicom_series(label_and_overview, *engines, job_id="labels")
    mr = Path(pydicom.data.get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
    with pytest.raises(JobFailed, match="MR_small.dcm: not VL Whole Slide Microscopy"):
        run_dicom_series([mr], *engines, job_id="mr")


@pytest.mark.parametrize("cut, match", [(4000, "truncated"), (-600, "truncated|cannot decode")])
def test_truncated_level_fails_clearly(tumour_slide: SlideFiles, tmp_path: Path, engines: Engines,
                                       cut: int, match: str) -> None:
    paths = []
    for p in tumour_slide.jpeg[:3]:
        data = p.read_bytes()
        q = tmp_path / p.name
        q.write_bytes(data[: (cut if cut > 0 else len(data) + cut)] if p.name == "level_1.dcm" else data)
        paths.append(q)
    with pytest.raises(JobFailed, match=match):
        run_dicom_series(paths, *engines, job_id="cut")


def test_corrupt_frame_fails_with_the_codec_reason(tumour_slide: SlideFiles, tmp_path: Path, engines: Engines) -> None:
    paths = [tmp_path / p.name for p in tumour_slide.jpeg[:3]]
    for p, q in zip(tumour_slide.jpeg[:3], paths):
        data = bytearray(p.read_bytes())
        if p.name == "level_1.dcm":  # scribble over the middle of the frames
            mid = len(data) // 2
            data[mid : mid + 20000] = os.urandom(20000)
        q.write_bytes(bytes(data))
    with pytest.raises(JobFailed, match="cannot decode a frame|bad item tag|truncated"):
        run_dicom_series(paths, *engines, job_id="corrupt")


def test_unreadable_vendor_file_fails(tmp_path: Path, engines: Engines) -> None:
    bogus = tmp_path / "slide.svs"
    bogus.write_bytes(b"not a slide at all")
    with pytest.raises(JobFailed, match="openslide cannot read slide.svs"):
        run_slide_file(bogus, *engines, job_id="bogus")


def test_engine_failure_becomes_job_failure(tumour_slide: SlideFiles, engines: Engines) -> None:
    tile, slide = engines

    class Broken:
        manifest = tile.manifest
        batch_sizes = tile.batch_sizes

        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            raise RuntimeError("device lost")

    with pytest.raises(JobFailed, match="tile engine failed: device lost"):
        run_dicom_series(tumour_slide.jpeg, Broken(), slide, job_id="broken")
