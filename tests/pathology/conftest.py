"""Synthetic slides shared by the pathology tests: one tumour and one normal, in three encodings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from export.synthetic.slide import SyntheticSlide, make_slide, write_dicom_wsi, write_tiff
from tests.pathology.tiny_engines import TinyEngine, tiny_engines

BASE_PX = 2048  # level 0 is 2048 x 2048 at 0.5 um/px; the tiny engine reads level 1 (1 um/px)


@dataclass(frozen=True)
class SlideFiles:
    slide: SyntheticSlide
    jpeg: list[Path]  #: DICOM WSI, JPEG baseline frames (+ LABEL, OVERVIEW)
    jpeg2000: list[Path]  #: DICOM WSI, lossless JPEG 2000 frames
    tiff: Path  #: pyramidal JPEG TIFF for openslide


def _write(root: Path, seed: int, tumour: bool) -> SlideFiles:
    slide = make_slide(seed, BASE_PX, BASE_PX, tumour)
    jpeg = write_dicom_wsi(slide, root / "jpeg", transfer_syntax="jpeg")
    j2k = write_dicom_wsi(slide, root / "j2k", transfer_syntax="jpeg2000", extras=False)
    tiff = write_tiff(slide, root / "slide.tiff")
    return SlideFiles(slide, jpeg, j2k, tiff)


@pytest.fixture(scope="session")
def tumour_slide(tmp_path_factory: pytest.TempPathFactory) -> SlideFiles:
    return _write(tmp_path_factory.mktemp("tumour"), 3, True)


@pytest.fixture(scope="session")
def normal_slide(tmp_path_factory: pytest.TempPathFactory) -> SlideFiles:
    return _write(tmp_path_factory.mktemp("normal"), 4, False)


@pytest.fixture(scope="session")
def engines() -> tuple[TinyEngine, TinyEngine]:
    return tiny_engines(tile_size=64, mpp=1.0)
