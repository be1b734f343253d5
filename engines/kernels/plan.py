"""Launch geometry of ``tiling.cu``, shared by the CUDA launcher and the host build.

One block works on a band of ``band_rows`` output rows of one tile: it keeps
the filter taps of the tile's ``size`` columns and of its band's rows in shared
memory, and copies the band's source rows there too when they fit in
``stage_bytes`` (see the kernel's header and ``docs/tiling_kernel.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BLOCK", "SHARED_LIMIT", "LaunchPlan", "bytes_moved", "plan_launch", "taps_for"]

#: threads per block (a multiple of the 32-thread warp; the kernels' __launch_bounds__ say 256)
BLOCK = 256
#: the grid's y dimension (one per tile) may not exceed this
_MAX_TILES = 65535
#: shared memory one block may use without opting in, on every architecture from sm_75 on
SHARED_LIMIT = 48 * 1024
#: output pixels a block aims at: band_rows * size ~ this, so each thread makes ~8 pixels
_PIXELS_PER_BLOCK = 2048
#: the kernel's static shared memory (the block's tissue counter), kept clear of
_STATIC_SHARED = 64
_TAPS_BYTES = 8  # sizeof(Taps): two ints
#: bands are halved to fit their source rows in shared memory down to this many rows, no further
_MIN_BAND_ROWS = 2


@dataclass(frozen=True)
class LaunchPlan:
    """Arguments of one launch: taps per output index, band height, staging room, grid."""

    taps: int
    band_rows: int
    stage_bytes: int
    shared_bytes: int
    grid: tuple[int, int]
    block: int = BLOCK


def taps_for(in_len: int, out_len: int) -> int:
    """Upper bound of the BILINEAR window length when resizing ``in_len`` to ``out_len``."""
    support = max(in_len / out_len, 1.0)
    return math.floor(2.0 * support) + 2


def plan_launch(rects: np.ndarray, size: int) -> LaunchPlan:
    """Geometry for tiles ``rects`` (N, 4) of (x, y, w, h) resized to ``size``; ValueError if it cannot fit."""
    r = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    if size < 1 or not 0 < len(r) <= _MAX_TILES:
        raise ValueError(f"need a positive size and 1 to {_MAX_TILES} tiles, got size={size}, {len(r)} tiles")
    longest = int(r[:, 2:4].max())
    taps = taps_for(longest, size)
    band_rows = max(1, min(size, _PIXELS_PER_BLOCK // size))
    while True:
        taps_bytes = (size + band_rows) * (4 * taps + _TAPS_BYTES)
        room = (SHARED_LIMIT - _STATIC_SHARED - taps_bytes) // 16 * 16
        # the most source rows a band spans: its rows' centres (band_rows - 1) * scale apart, plus a window
        span = np.minimum(r[:, 3], (band_rows - 1) * r[:, 3] // size + taps + 1)
        wanted = -(-int((span * 3 * r[:, 2]).max()) // 16) * 16
        if wanted <= room or band_rows <= _MIN_BAND_ROWS:
            break
        band_rows //= 2  # fewer rows per band, so the widest band's source rows fit in shared memory
    if room < 0:
        raise ValueError(
            f"a {longest}-pixel tile side resized to {size} needs {taps} filter taps per pixel, "
            f"{taps_bytes} bytes of shared memory per block, over the {SHARED_LIMIT}-byte limit: "
            "read such tiles from a coarser pyramid level"
        )
    stage_bytes = min(room, wanted)  # no more than needed: smaller blocks, more of them per multiprocessor
    grid = (math.ceil(size / band_rows), len(r))
    return LaunchPlan(taps, band_rows, stage_bytes, taps_bytes + stage_bytes, grid)


def bytes_moved(rects: np.ndarray, size: int, itemsize: int) -> int:
    """Bytes one launch must move through device memory at least (docs/tiling_kernel.md).

    Each tile's source pixels read once (3 bytes each; the halo rows two bands share
    come from L2), its rectangle read, its S x S x 3 outputs of ``itemsize`` bytes and
    its tissue counter written.
    """
    r = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    read = int((r[:, 2] * r[:, 3]).sum()) * 3 + 16 * len(r)
    write = len(r) * (3 * size * size * itemsize + 4)
    return read + write
