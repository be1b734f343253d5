"""The pathology heat map as a fractional Segmentation over a slide level (PS3.3 A.51, C.8.20).

The tile scores become a FRACTIONAL (PROBABILITY) segmentation in the slide
coordinate system of the level the pipeline read: its total pixel matrix
covers that level's total pixel matrix, one segmentation pixel per scored
tile (pixel spacing = the level's spacing times the tile size), cut into
frames of at most 256 x 256 with an explicit Plane Position (Slide) per frame
(TILED_SPARSE, PS3.3 C.7.6.17.3), so a pathology viewer overlays it on the
slide. TILED_SPARSE rather than TILED_FULL because validators and viewers that
predate TILED_FULL segmentations (dciodvfy among them) reject frames without
per-frame positions. Tiles without tissue (NaN) are 0. One value per tile
keeps the array small; beyond :data:`MAX_SIDE` values on a side (a slide of
millions of tiles) the grid is downsampled by an integer factor, each value
the maximum of the tiles it covers (hot spots stay visible), and the pixel
spacing grows by the same factor: the object and the memory to build it stay
bounded however large the slide is.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from appliance.errors import ReportError
from appliance.findings import Finding, HeatMap, StudyResult
from appliance.reports import uids
from appliance.reports._source import with_type2
from appliance.reports.sr import DeviceInfo, engine_equipment, result_version

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9902
WSI_SOP_CLASS: str = VLWholeSlideMicroscopyImageStorage
#: Segmentation frames are at most this many pixels on a side (PS3.3 C.8.12.4.1.2 tiles).
MAX_FRAME = 256
#: a heat map (SEG, capture) has at most this many values on a side; larger grids are max-pooled
MAX_SIDE = 2048

__all__ = ["MAX_SIDE", "bounded_grid", "build_heatmap_seg"]


def bounded_grid(scores: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, int]:
    """``scores`` max-pooled by the smallest integer factor that brings both sides to ``max_side`` or less.

    NaN (no tissue) stays NaN only where every pooled tile is NaN. Returns (grid, factor).
    """
    factor = max(1, -(-max(scores.shape) // max_side))
    if factor == 1:
        return scores, 1
    rows, cols = -(-scores.shape[0] // factor), -(-scores.shape[1] // factor)
    padded = np.full((rows * factor, cols * factor), np.nan, np.float32)
    padded[: scores.shape[0], : scores.shape[1]] = scores
    blocks = padded.reshape(rows, factor, cols, factor)
    with np.errstate(all="ignore"):
        empty = np.isnan(blocks).all(axis=(1, 3))
        pooled = np.nanmax(np.where(np.isnan(blocks), -np.inf, blocks), axis=(1, 3)).astype(np.float32)
    pooled[empty] = np.nan
    return pooled, factor


def _check(heat_map: HeatMap, level: Dataset) -> np.ndarray:
    scores = np.asarray(heat_map.scores, dtype=np.float32)
    if scores.ndim != 2 or scores.size == 0:
        raise ReportError(f"heat map scores must be a non-empty 2-D grid, got shape {scores.shape}")
    if heat_map.tile_px <= 0:
        raise ReportError(f"heat map tile size must be positive, got {heat_map.tile_px}")
    finite = scores[np.isfinite(scores)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        raise ReportError(f"heat map scores must lie in [0, 1], got [{finite.min()}, {finite.max()}]")
    expect = (-(-heat_map.level_rows // heat_map.tile_px), -(-heat_map.level_columns // heat_map.tile_px))
    whole = (heat_map.level_rows // heat_map.tile_px, heat_map.level_columns // heat_map.tile_px)
    if whole[0] <= scores.shape[0] <= expect[0] and whole[1] <= scores.shape[1] <= expect[1]:
        # A grid of whole tiles leaves the partial last row/column unscored: pad it as "no tissue".
        padded = np.full(expect, np.nan, dtype=np.float32)
        padded[: scores.shape[0], : scores.shape[1]] = scores
        scores = padded
    if scores.shape != expect:
        raise ReportError(
            f"heat map grid {scores.shape} does not cover the level {heat_map.level_rows}x{heat_map.level_columns} "
            f"in tiles of {heat_map.tile_px}: expected {expect}"
        )
    if level.get("SOPClassUID") != WSI_SOP_CLASS:
        raise ReportError(f"heat map level must be a VL Whole Slide Microscopy image, got {level.get('SOPClassUID')}")
    if "TotalPixelMatrixOriginSequence" not in level or "ImageOrientationSlide" not in level:
        raise ReportError("heat map level lacks Total Pixel Matrix Origin Sequence or Image Orientation (Slide)")
    return np.nan_to_num(scores, nan=0.0)


def _segment(result: StudyResult, index: int, finding: Finding) -> hd.seg.SegmentDescription:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=finding.engine.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=finding.engine.version[:64],
        source=finding.engine.manufacturer[:64],
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Tumour probability"[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Carcinoma,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=uids.tracking_uid(result.job_id, result_version(result), index),
        tracking_id=f"{finding.pipeline} finding {index}",
        anatomic_regions=[codes.SCT.Breast],
    )


def build_heatmap_seg(
    result: StudyResult, index: int, finding: Finding, device: DeviceInfo, level: Dataset
) -> hd.seg.Segmentation:
    """The fractional SEG of finding ``index`` (1-based) over the header ``level`` of its heat-map level."""
    heat_map = finding.heat_map
    if heat_map is None:
        raise ReportError(f"finding {index} of job {result.job_id} has no heat map")
    grid, factor = bounded_grid(_check(heat_map, level), MAX_SIDE)
    origin = level.TotalPixelMatrixOriginSequence[0]
    measures = level.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    row_mm, col_mm = heat_map.pixel_spacing_mm
    position = hd.PlanePositionSequence(
        coordinate_system="SLIDE",
        image_position=(
            float(origin.XOffsetInSlideCoordinateSystem),
            float(origin.YOffsetInSlideCoordinateSystem),
            float(origin.get("ZOffsetInSlideCoordinateSystem", 0.0)),
        ),
        pixel_matrix_position=(1, 1),
    )
    pixel_measures = hd.PixelMeasuresSequence(
        pixel_spacing=(row_mm * heat_map.tile_px * factor, col_mm * heat_map.tile_px * factor),
        slice_thickness=float(measures.get("SliceThickness", 0.001) or 0.001),
    )
    frame = (min(MAX_FRAME, grid.shape[0]), min(MAX_FRAME, grid.shape[1]))
    version = result_version(result)
    seg = hd.seg.Segmentation(
        source_images=[with_type2(level)],
        pixel_array=grid[np.newaxis, :, :, np.newaxis],
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[_segment(result, index, finding)],
        series_instance_uid=uids.series_instance_uid(result.job_id, version, "seg"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid(result.job_id, f"{version}#{index}", "seg"),
        instance_number=index,
        **device.equipment(),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_description="AI tumour probability heat map (unverified)",
        content_label="HEATMAP",
        series_description="AI heat map (unverified)",
        pixel_measures=pixel_measures,
        plane_positions=[position],
        omit_empty_frames=False,
        tile_pixel_array=True,
        tile_size=frame,
        dimension_organization_type=hd.DimensionOrganizationTypeValues.TILED_SPARSE,
        contributing_equipment=[engine_equipment(finding.engine, device)],
    )
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = []  # General Image Type 2C: no patient orientation for a slide
    logger.info("built heat-map SEG for job %s finding %d (%dx%d values, %d tile(s) a side each)",
                result.job_id, index, *grid.shape, factor)
    return seg
