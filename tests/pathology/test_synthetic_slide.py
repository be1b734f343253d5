"""The synthetic slide writer: dciodvfy-clean DICOM WSI, wsidicom and openslide read it back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from wsidicom import WsiDicom

from export.errors import ExportError
from export.synthetic.slide import make_slide, write_dicom_wsi
from export.synthetic.tissue import render_tile
from tests.pathology.conftest import SlideFiles
from tests.peers import DCIODVFY, dciodvfy


def test_render_tile_is_seeded_and_tumour_is_darker() -> None:
    a = render_tile(np.random.default_rng(1), 96, True)
    b = render_tile(np.random.default_rng(1), 96, True)
    normal = render_tile(np.random.default_rng(1), 96, False)
    glassy = render_tile(np.random.default_rng(1), 96, False, tissue_fraction=0.3)
    assert a.dtype == np.uint8 and a.shape == (96, 96, 3)
    assert np.array_equal(a, b)
    assert a.mean() < normal.mean() - 30  # crowded hyperchromatic nuclei
    assert (glassy.min(axis=2) > 225).mean() > 0.5  # mostly near-white glass
    with pytest.raises(ValueError, match="tissue_fraction must be in"):
        render_tile(np.random.default_rng(0), 32, False, 1.5)


@pytest.mark.parametrize("encoding", ["jpeg", "jpeg2000"])
def test_dicom_wsi_passes_dciodvfy(tumour_slide: SlideFiles, encoding: str) -> None:
    if not DCIODVFY.exists():
        pytest.skip(f"dciodvfy not installed at {DCIODVFY}")
    for path in getattr(tumour_slide, encoding):
        errors, output = dciodvfy(path)
        assert errors == [], output
        assert "VLWholeSlideMicroscopyImage" in output


def test_dicom_wsi_tags_a_scanner_writes(tumour_slide: SlideFiles) -> None:
    base, level1, _, label, overview = (pydicom.dcmread(p, stop_before_pixels=True) for p in tumour_slide.jpeg)
    assert list(base.ImageType) == ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    assert list(level1.ImageType)[2] == "VOLUME"
    assert list(label.ImageType)[2] == "LABEL" and list(overview.ImageType)[2] == "OVERVIEW"
    assert base.DimensionOrganizationType == "TILED_FULL"
    assert (base.TotalPixelMatrixColumns, base.TotalPixelMatrixRows) == (2048, 2048)
    assert base.NumberOfFrames == 64 and base.PhotometricInterpretation == "YBR_FULL_422"
    spacing = base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([0.0005, 0.0005])
    assert base.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert len({d.SeriesInstanceUID for d in (base, level1, label)}) == 1


def test_wsidicom_reads_our_pyramid(tumour_slide: SlideFiles) -> None:
    with WsiDicom.open(tumour_slide.jpeg2000) as wsi:
        assert len(wsi.levels) == 3
        region = np.asarray(wsi.read_region((100, 200), 1, (128, 128)).convert("RGB"))
    want = tumour_slide.slide.render(1, 100, 200, 128, 128)
    assert np.array_equal(region, want)


def test_openslide_reads_the_tiff(tumour_slide: SlideFiles) -> None:
    with openslide.OpenSlide(str(tumour_slide.tiff)) as s:
        assert s.level_dimensions == ((2048, 2048), (1024, 1024), (512, 512))
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        got = np.asarray(s.read_region((512, 512), 1, (128, 128)).convert("RGB")).astype(np.int16)
    want = tumour_slide.slide.render(1, 256, 256, 128, 128).astype(np.int16)
    assert np.abs(got - want).mean() < 4.0


def test_make_slide_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="at least 64x64"):
        make_slide(0, 32, 500, False)
    with pytest.raises(ExportError, match="transfer_syntax must be one of"):
        write_dicom_wsi(make_slide(0, 128, 128, False), tmp_path, transfer_syntax="rle")
