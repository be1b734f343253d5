"""Study results the report tests build: both pipelines, positive and negative, odd sources."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from appliance.findings import Finding, HeatMap, StudyResult, TileHit
from tests.reports._sources import copy_testdata, engine, make_wsi_level, mr_series, odd_mr, source_of


def pathology(directory: Path, probability: float, version: str = "1.0.0") -> StudyResult:
    level = make_wsi_level(directory / "wsi_level.dcm", rows=768, columns=1000, tile=256, seed=f"slide-{probability}")
    rng = np.random.default_rng(7)
    scores = rng.random((3, 4)).astype(np.float32) * probability
    scores[0, 0] = np.nan  # no tissue
    heat_map = HeatMap(scores, 256, level, 768, 1000, (0.0005, 0.0005))
    finding = Finding(
        "pathology",
        probability,
        0.5,
        engine("pathology_slide", version),
        (level,),
        heat_map=heat_map,
        top_tiles=(TileHit(256, 256, float(np.nanmax(scores))),),
        tiles_scored=11,
    )
    return StudyResult(f"job-path-{probability}", level.study_uid, (finding,))


def mri(directory: Path, probability: float, source: str, version: str = "1.0.0") -> StudyResult:
    path = odd_mr(directory) if source == "odd" else copy_testdata(source, directory)
    image = source_of(path)
    finding = Finding("breast_mri", probability, 0.42, engine("breast_mri", version), (image,), kinetic_curve="washout")
    return StudyResult(f"job-mri-{source}-{probability}", image.study_uid, (finding,), notes=("Clinical: ER unknown.",))


def mri_series(directory: Path, probability: float) -> StudyResult:
    images = tuple(source_of(p) for p in mr_series(directory))
    finding = Finding("breast_mri", probability, 0.42, engine("breast_mri"), images, kinetic_curve="plateau")
    return StudyResult(f"job-mri-series-{probability}", images[0].study_uid, (finding,))


def exported_slide(directory: Path, probability: float, whole_tiles: bool = False) -> StudyResult:
    """A two-level JPEG WSI from the project's synthetic slide writer; the heat map over level 0.

    ``whole_tiles``: the grid covers whole tiles only, as the pathology pipeline's grid does.
    """
    import pydicom
    from export.synthetic.slide import make_slide, write_dicom_wsi

    paths = write_dicom_wsi(
        make_slide(3, 1200, 800, True), directory / "slide", levels=2, extras=False,
        study_uid=generate_uid(entropy_srcs=["exported-slide-study"]),
        series_uid=generate_uid(entropy_srcs=["exported-slide-series"]),
    )
    levels = tuple(source_of(p) for p in paths)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    rows, columns = int(ds.TotalPixelMatrixRows), int(ds.TotalPixelMatrixColumns)
    spacing = float(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0])
    tile = 224
    shape = (rows // tile, columns // tile) if whole_tiles else (-(-rows // tile), -(-columns // tile))
    grid = np.random.default_rng(3).random(shape).astype(np.float32)
    heat_map = HeatMap(grid, tile, levels[0], rows, columns, (spacing, spacing))
    finding = Finding("pathology", probability, 0.5, engine("pathology_slide"), levels, heat_map=heat_map)
    return StudyResult(f"job-exported-slide-{probability}", levels[0].study_uid, (finding,))


def enhanced_mr(directory: Path, probability: float) -> StudyResult:
    """A synthetic DCE study as one Enhanced MR multi-frame instance (geometry in functional groups)."""
    from export.synthetic.dce import make_case
    from export.synthetic.dce_dicom import write_case

    paths = write_case(make_case(np.random.default_rng(5), True), directory / "enhanced", "enhanced")
    images = tuple(source_of(p) for p in paths)
    finding = Finding("breast_mri", probability, 0.42, engine("breast_mri"), images, kinetic_curve="washout")
    return StudyResult(f"job-mri-enhanced-{probability}", images[0].study_uid, (finding,))


def two_engines(directory: Path) -> StudyResult:
    """Two findings on one MR study from two engine versions: two groups, two engines credited."""
    images = tuple(source_of(p) for p in mr_series(directory))
    first = Finding("breast_mri", 0.2, 0.42, engine("breast_mri", "1.0.0"), images[:3])
    second = Finding("breast_mri", 0.8, 0.42, engine("breast_mri", "2.0.0"), images[3:])
    return StudyResult("job-two-engines", images[0].study_uid, (first, second))


CASES: dict[str, Callable[[Path], StudyResult]] = {
    "pathology-positive": lambda d: pathology(d, 0.91),
    "pathology-negative": lambda d: pathology(d, 0.08),
    "mri-positive-MR_small": lambda d: mri(d, 0.77, "MR_small.dcm"),
    "mri-negative-implicit-vr-missing-tags": lambda d: mri(d, 0.1, "odd"),
    "mri-positive-CT_small-source": lambda d: mri(d, 0.6, "CT_small.dcm"),
    "mri-negative-big-endian-source": lambda d: mri(d, 0.3, "MR_small_bigendian.dcm"),
    "mri-positive-two-series-six-instances": lambda d: mri_series(d, 0.66),
    "pathology-exported-jpeg-slide": lambda d: exported_slide(d, 0.7),
    "pathology-exported-slide-whole-tile-grid": lambda d: exported_slide(d, 0.2, whole_tiles=True),
    "mri-positive-enhanced-mr-source": lambda d: enhanced_mr(d, 0.8),
    "mri-two-findings-two-engine-versions": two_engines,
}
