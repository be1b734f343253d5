"""Shared by the tiling-kernel tests: the test region, tile sets and the comparison with the reference."""

from __future__ import annotations

import numpy as np

from engines.kernels import TileBatch
from export.synthetic.tissue import render_tile

MEAN = (0.72, 0.52, 0.70)
STD = (0.14, 0.18, 0.12)
#: what the kernel must meet against the reference (issue 20)
F32_ATOL = 1e-5
F16_ULPS = 1

#: tiles of the 480 x 480 test region, by kind of resampling to 112
RECT_SETS = {
    "downscale": [(x, y, 150, 150) for y in (0, 90, 330) for x in (0, 170, 330)],
    "identity": [(0, 0, 112, 112), (368, 368, 112, 112), (200, 40, 112, 112)],
    "upscale": [(5, 9, 80, 80), (400, 0, 80, 80)],
    "mixed": [(0, 0, 150, 120), (100, 200, 97, 131), (479, 479, 1, 1)],
    # partial tiles cut by the region's right and bottom edges, and a whole-region one (4.3x down)
    "edge": [(430, 0, 50, 150), (0, 400, 150, 80), (400, 430, 80, 50), (477, 300, 3, 112), (0, 0, 480, 480)],
}


def make_region(seed: int = 7) -> np.ndarray:
    """480 x 480 uint8 RGB: nine synthetic H&E tiles, some half glass."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(3):
        tf = 0.4 if i == 1 else 1.0
        rows.append(np.concatenate([render_tile(rng, 160, (i + j) % 2 == 0, tf) for j in range(3)], 1))
    return np.ascontiguousarray(np.concatenate(rows, 0))


def assert_matches_reference(got: TileBatch, want: TileBatch, size: int) -> None:
    """float32 within F32_ATOL, float16 within F16_ULPS units in the last place, tissue counts exact."""
    assert got.images.dtype == want.images.dtype and got.images.shape == want.images.shape
    if got.images.dtype == np.float16:
        # float16 bit patterns as sign-magnitude integers: adjacent values differ by one
        def ordered(a: np.ndarray) -> np.ndarray:
            bits = a.view(np.int16).astype(np.int32)
            return np.where(bits < 0, -(bits & 0x7FFF), bits)

        ulps = np.abs(ordered(got.images) - ordered(want.images))
        assert ulps.max() <= F16_ULPS, f"float16 differs by {ulps.max()} ulps at {np.unravel_index(ulps.argmax(), ulps.shape)}"
    else:
        diff = np.abs(got.images.astype(np.float64) - want.images)
        assert diff.max() <= F32_ATOL, f"float32 differs by {diff.max():.3g} at {np.unravel_index(diff.argmax(), diff.shape)}"
    got_counts = np.rint(got.tissue_fraction * size * size).astype(np.int64)
    want_counts = np.rint(want.tissue_fraction * size * size).astype(np.int64)
    assert np.array_equal(got_counts, want_counts), f"tissue counts {got_counts} != reference {want_counts}"
