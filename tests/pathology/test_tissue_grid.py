"""Tissue detection and the tile grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.errors import JobFailed
from appliance.findings import SourceImage
from appliance.pathology import Level, make_grid, nearest_level, tissue_mask
from appliance.pathology._tissue import otsu_threshold, remove_small_objects
from export.synthetic.tissue import render_tile

SRC = SourceImage("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.77.1.6", Path("x.dcm"))


def _level(i: int, size: int, mpp: float) -> Level:
    return Level(i, size, size, mpp, SRC, (mpp / 1000, mpp / 1000))


def test_otsu_splits_two_modes() -> None:
    values = np.concatenate([np.full(500, 0.1), np.full(500, 0.7)])
    assert 0.1 < otsu_threshold(values) <= 0.7


def test_mask_finds_tissue_not_glass_and_drops_specks() -> None:
    rng = np.random.default_rng(1)
    img = np.full((128, 128, 3), 242, np.uint8)
    img[32:96, 32:96] = render_tile(rng, 64, False)
    img[5:7, 110:112] = (120, 60, 150)  # a 2x2 speck of dust
    mask = tissue_mask(img, min_area=16)
    assert mask[40:88, 40:88].mean() > 0.9
    assert not mask[:20].any() and not mask[:, 110:].any()
    assert not tissue_mask(np.full((64, 64, 3), 240, np.uint8)).any()


def test_remove_small_objects_keeps_big_components() -> None:
    m = np.zeros((20, 20), bool)
    m[1:3, 1:3] = True  # 4 px
    m[10:18, 5:15] = True  # 80 px, a U shape below
    m[12:18, 8:12] = False
    out = remove_small_objects(m, 10)
    assert not out[1:3, 1:3].any()
    assert np.array_equal(out[10:18, 5:15], m[10:18, 5:15])


def test_grid_scales_tile_to_model_mpp_and_keeps_tissue() -> None:
    level = _level(0, 1000, 0.25)
    mask_level = _level(2, 250, 1.0)
    mask = np.zeros((250, 250), bool)
    mask[0:60, 0:30] = True
    grid = make_grid(level, mask, mask_level, tile_size=56, model_mpp=0.5, min_tissue=0.25)
    assert grid.tile_px == 112  # 56 px at 0.5 um = 112 px at 0.25 um
    assert (grid.rows, grid.cols) == (8, 8)
    # A tile is 28 mask px: column 0 of rows 0-1 is covered; row 2 (4/28) and column 1 (2/28) are not.
    assert {tuple(p) for p in grid.positions} == {(0, 0), (1, 0)}
    assert grid.xy().tolist() == [[0, 0], [0, 112]]
    assert grid.tissue == pytest.approx([1.0, 1.0])


def test_grid_rejects_slide_smaller_than_a_tile() -> None:
    with pytest.raises(JobFailed, match="smaller than one tile"):
        make_grid(_level(0, 100, 1.0), np.ones((10, 10), bool), _level(0, 100, 1.0), 224, 1.0)


def test_nearest_level_on_log_scale() -> None:
    levels = [_level(0, 1000, 0.25), _level(1, 500, 0.5), _level(2, 250, 1.0)]
    assert nearest_level(levels, 0.45).index == 1
    assert nearest_level(levels, 0.1).index == 0
    with pytest.raises(JobFailed, match="no usable pyramid level"):
        nearest_level([], 0.5)
