"""NumPy reference of the tiling kernel (DESIGN.md, "CUDA tiling kernels").

Contract, shared with ``tiling.cu``:

* input: a decoded region, uint8 (H, W, 3) RGB, and tile rectangles
  ``(x, y, w, h)`` inside it, in region pixels;
* each tile is resized to ``size`` x ``size`` with Pillow's BILINEAR filter
  (a triangle filter whose support widens with the down-scaling factor, so
  down-sampling is anti-aliased; pixel centres at +0.5; the window is clipped
  to the tile, so a tile never sees its neighbours);
* the result is scaled to 0..1, normalized ``(v - mean) / std`` per channel
  and written NCHW as float32 or float16;
* each tile's tissue fraction is the share of its resized pixels whose
  ``max(RGB) - min(RGB)`` (a saturation proxy on the 0..255 scale) exceeds
  ``tissue_threshold``; glass is white or grey and has almost none.

Tiles of equal rectangle size are resized together with two matrix products
(``Wy @ tile @ Wx.T``), which is what makes this much faster than a per-tile
loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["TileBatch", "check_inputs", "resize_weights", "tile_batch"]


@dataclass(frozen=True)
class TileBatch:
    """The kernel's output: ``images`` (N, 3, S, S) and ``tissue_fraction`` (N,)."""

    images: np.ndarray
    tissue_fraction: np.ndarray


def resize_weights(in_len: int, out_len: int) -> np.ndarray:
    """Pillow's BILINEAR resampling weights, float32 of shape (out_len, in_len)."""
    if in_len < 1 or out_len < 1:
        raise ValueError(f"lengths must be positive, got in={in_len} out={out_len}")
    scale = in_len / out_len
    filterscale = max(scale, 1.0)
    centre = (np.arange(out_len, dtype=np.float64) + 0.5) * scale
    x = (np.arange(in_len, dtype=np.float64)[None, :] + 0.5 - centre[:, None]) / filterscale
    w = np.clip(1.0 - np.abs(x), 0.0, None)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def check_inputs(region: np.ndarray, rects: np.ndarray, size: int) -> np.ndarray:
    if region.dtype != np.uint8 or region.ndim != 3 or region.shape[2] != 3:
        raise ValueError(
            f"region must be uint8 (H, W, 3), got {region.dtype} {region.shape}"
        )
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    r = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    h, w = region.shape[:2]
    bad = (r[:, 0] < 0) | (r[:, 1] < 0) | (r[:, 2] < 1) | (r[:, 3] < 1)
    bad |= (r[:, 0] + r[:, 2] > w) | (r[:, 1] + r[:, 3] > h)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"tile rectangle {tuple(int(v) for v in r[i])} (x, y, w, h) is empty or "
            f"outside the {w}x{h} region"
        )
    return r


def tile_batch(
    region: np.ndarray,
    rects: np.ndarray | Sequence[Sequence[int]],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    dtype: type[np.floating] | np.dtype = np.float32,
    tissue_threshold: float = 20.0,
) -> TileBatch:
    """Resize, normalize and measure tissue of every tile (see module docstring)."""
    r = check_inputs(region, np.asarray(rects), size)
    out_dtype = np.dtype(dtype)
    if out_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"dtype must be float32 or float16, got {out_dtype}")
    n = r.shape[0]
    images = np.empty((n, 3, size, size), dtype=out_dtype)
    fraction = np.empty(n, dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32) * 255.0
    inv = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)
    for w, h in sorted({(int(w), int(h)) for w, h in r[:, 2:4]}):
        idx = np.flatnonzero((r[:, 2] == w) & (r[:, 3] == h))
        tiles = np.stack([region[y : y + h, x : x + w] for x, y in r[idx, :2]])  # (k, h, w, 3) uint8
        t = _resample(tiles, size)  # (k, 3, S, S) float32 on the 0..255 scale
        hi = np.maximum(np.maximum(t[:, 0], t[:, 1]), t[:, 2])
        hi -= np.minimum(np.minimum(t[:, 0], t[:, 1]), t[:, 2])
        fraction[idx] = (hi > tissue_threshold).mean(axis=(1, 2))
        t -= m.reshape(1, 3, 1, 1)
        t *= inv.reshape(1, 3, 1, 1)
        if len(idx) == n and out_dtype == np.float32:
            images = t  # one tile shape (the usual grid): no copy
        else:
            images[idx] = t
    return TileBatch(images=images, tissue_fraction=fraction)


def _taps(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero band of :func:`resize_weights`: indices and weights (out_len, K)."""
    dense = resize_weights(in_len, out_len)
    nz = dense > 0
    first = nz.argmax(axis=1)
    k = int((nz.shape[1] - nz[:, ::-1].argmax(axis=1) - first).max())
    idx = first[:, None] + np.arange(k)[None, :]
    inside = idx < in_len
    idx = np.minimum(idx, in_len - 1)
    w = np.where(inside, np.take_along_axis(dense, idx, axis=1), 0.0).astype(np.float32)
    return idx, w


def _resample(tiles: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 tiles (k, h, w, 3) to float32 planar (k, 3, S, S), rows then columns.

    Rows are gathered straight from the uint8 tiles (contiguous runs of
    ``w * 3`` bytes) and weighted into float32; the result is made planar,
    and the column taps gather along its last axis.
    """
    k, h, w, _ = tiles.shape
    iy, wy = _taps(h, size)
    ix, wx = _taps(w, size)
    if h == size and iy.shape[1] == 1:  # identity rows
        rows = tiles.astype(np.float32)
    else:
        rows = np.multiply(tiles[:, iy[:, 0]], wy[:, 0].reshape(1, size, 1, 1), dtype=np.float32)
        for j in range(1, iy.shape[1]):
            rows += np.multiply(tiles[:, iy[:, j]], wy[:, j].reshape(1, size, 1, 1), dtype=np.float32)
    planar = np.ascontiguousarray(rows.transpose(0, 3, 1, 2))  # (k, 3, S, w)
    if w == size and ix.shape[1] == 1:  # identity columns
        return planar
    out = np.take(planar, ix[:, 0], axis=3)
    out *= wx[:, 0]
    for j in range(1, ix.shape[1]):
        term = np.take(planar, ix[:, j], axis=3)
        term *= wx[:, j]
        out += term
    return out
