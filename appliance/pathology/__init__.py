"""The pathology pipeline: whole-slide images to a slide score and a heat map."""

from __future__ import annotations

from appliance.pathology._grid import TileGrid, make_grid
from appliance.pathology._levels import Level, SlideReader, nearest_level
from appliance.pathology._tissue import tissue_mask
from appliance.pathology.pipeline import (
    PathologySettings,
    run_dicom_series,
    run_slide,
    run_slide_file,
)

__all__ = [
    "Level",
    "PathologySettings",
    "SlideReader",
    "TileGrid",
    "make_grid",
    "nearest_level",
    "run_dicom_series",
    "run_slide",
    "run_slide_file",
    "tissue_mask",
]
