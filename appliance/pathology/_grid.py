"""The tile grid: the model's tile size and mpp laid over the chosen level.

A tile covers ``tile_px = round(tile_size * model_mpp / level_mpp)`` level
pixels, so the engine sees the magnification it was trained at after the
kernel resizes it to ``tile_size``. Tiles are kept where the tissue mask,
measured at low resolution, covers at least ``min_tissue`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.errors import JobFailed
from appliance.pathology._levels import Level

__all__ = ["TileGrid", "make_grid"]


@dataclass(frozen=True)
class TileGrid:
    """Kept tiles of a regular grid over one level, row-major."""

    level: Level
    tile_px: int  #: tile side in the level's pixels
    rows: int
    cols: int
    positions: np.ndarray  #: (N, 2) int (row, col) of kept tiles, row-major order
    tissue: np.ndarray  #: (N,) float32 tissue fraction from the low-resolution mask

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def xy(self) -> np.ndarray:
        """(N, 2) top-left (x, y) of each kept tile in level pixels."""
        return self.positions[:, ::-1] * self.tile_px


def make_grid(level: Level, mask: np.ndarray, mask_level: Level, tile_size: int, model_mpp: float,
              min_tissue: float = 0.25) -> TileGrid:
    """Full tiles of ``level`` whose share of ``mask`` (over ``mask_level``) is ``min_tissue`` or more."""
    tile_px = max(1, int(round(tile_size * model_mpp / level.mpp)))
    rows, cols = level.height // tile_px, level.width // tile_px
    if rows == 0 or cols == 0:
        raise JobFailed(
            f"the slide level ({level.width}x{level.height} px) is smaller than one tile ({tile_px} px)"
        )
    # Integral image of the mask, sampled at each tile's edges mapped onto the mask.
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), 0), 1)
    sy = mask.shape[0] / mask_level.height * (level.mpp / mask_level.mpp)
    sx = mask.shape[1] / mask_level.width * (level.mpp / mask_level.mpp)
    ye = np.clip(np.rint(np.arange(rows + 1) * tile_px * sy), 0, mask.shape[0]).astype(np.intp)
    xe = np.clip(np.rint(np.arange(cols + 1) * tile_px * sx), 0, mask.shape[1]).astype(np.intp)
    area = np.outer(np.maximum(np.diff(ye), 1), np.maximum(np.diff(xe), 1)).astype(np.float64)
    s = integral[ye[1:]][:, xe[1:]] - integral[ye[:-1]][:, xe[1:]] - integral[ye[1:]][:, xe[:-1]] + integral[ye[:-1]][:, xe[:-1]]
    frac = (s / area).astype(np.float32)
    keep = np.argwhere(frac >= min_tissue)
    return TileGrid(level, tile_px, rows, cols, keep.astype(np.int64), frac[keep[:, 0], keep[:, 1]])
