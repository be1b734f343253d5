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

Tiles of equal rectangle size are handled together, ``CHUNK_TILES`` at a time:
made planar while still uint8, resized with the non-zero taps of the separable
weights (rows, then columns), measured and normalized in place. Tiles already
at the output size skip resampling, and their tissue fraction is taken from the
uint8 pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["CHUNK_TILES", "TileBatch", "check_inputs", "resize_weights", "tile_batch"]

#: Tiles worked on at once: a few megabytes of float32 that stay in the CPU's caches between
#: the passes (resample, tissue, normalize) and are reused by the allocator, where one pass over
#: a whole batch would stream it through memory once per operation and fault in fresh pages.
CHUNK_TILES = 8


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
    out: np.ndarray | None = None,
    measure_tissue: bool = True,
) -> TileBatch:
    """Resize, normalize and measure tissue of every tile (see module docstring).

    ``out``, when given, is the (N, 3, S, S) array of ``dtype`` the images are
    written into (a slice of the caller's batch buffer, say); it is returned as
    ``images``. With ``measure_tissue=False`` (a caller that chose its tiles
    already) the tissue fractions are not computed and are NaN.
    """
    r = check_inputs(region, np.asarray(rects), size)
    out_dtype = np.dtype(dtype)
    if out_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"dtype must be float32 or float16, got {out_dtype}")
    n = r.shape[0]
    if out is None:
        images = np.empty((n, 3, size, size), dtype=out_dtype)
    elif out.shape != (n, 3, size, size) or out.dtype != out_dtype:
        raise ValueError(f"out must be {out_dtype} of shape {(n, 3, size, size)}, got {out.dtype} {out.shape}")
    else:
        images = out
    fraction = np.full(n, np.nan, dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32) * 255.0
    inv = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)
    for w, h in sorted({(int(w), int(h)) for w, h in r[:, 2:4]}):
        same = np.flatnonzero((r[:, 2] == w) & (r[:, 3] == h))
        for start in range(0, len(same), CHUNK_TILES):
            idx = same[start : start + CHUNK_TILES]
            planar = np.stack([region[y : y + h, x : x + w].transpose(2, 0, 1) for x, y in r[idx, :2]])  # (k, 3, h, w)
            contiguous = idx[-1] - idx[0] + 1 == len(idx)
            in_place = contiguous and w == h == size and out_dtype == np.float32
            if w == h == size:  # no resampling: tissue straight from the uint8 pixels, values exact
                if measure_tissue:
                    fraction[idx] = _tissue(planar, tissue_threshold)
                if in_place:  # normalize in the output itself
                    t = images[idx[0] : idx[-1] + 1]
                    np.copyto(t, planar, casting="unsafe")
                else:
                    t = planar.astype(np.float32)
            else:
                t = _resample(planar, size)  # (k, 3, S, S) float32 on the 0..255 scale
                if measure_tissue:
                    fraction[idx] = _tissue(t, tissue_threshold)
            t -= m.reshape(1, 3, 1, 1)
            t *= inv.reshape(1, 3, 1, 1)
            if contiguous and not in_place:
                images[idx[0] : idx[-1] + 1] = t
            elif not contiguous:
                images[idx] = t
    return TileBatch(images=images, tissue_fraction=fraction)


def _tissue(planes: np.ndarray, threshold: float) -> np.ndarray:
    """Share of pixels of each (3, S, S) tile whose max(RGB) - min(RGB) exceeds ``threshold``."""
    hi = np.maximum(np.maximum(planes[:, 0], planes[:, 1]), planes[:, 2])
    hi -= np.minimum(np.minimum(planes[:, 0], planes[:, 1]), planes[:, 2])
    return np.count_nonzero(hi > threshold, axis=(1, 2)) / float(hi.shape[1] * hi.shape[2])


@functools.lru_cache(maxsize=64)
def _taps(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero band of :func:`resize_weights`: indices and weights (out_len, K), read-only."""
    dense = resize_weights(in_len, out_len)
    nz = dense > 0
    first = nz.argmax(axis=1)
    k = int((nz.shape[1] - nz[:, ::-1].argmax(axis=1) - first).max())
    idx = first[:, None] + np.arange(k)[None, :]
    inside = idx < in_len
    idx = np.minimum(idx, in_len - 1)
    w = np.where(inside, np.take_along_axis(dense, idx, axis=1), 0.0).astype(np.float32)
    idx.flags.writeable = False
    w.flags.writeable = False
    return idx, w


def _resample(planar: np.ndarray, size: int) -> np.ndarray:
    """Resize planar uint8 tiles (k, 3, h, w) to float32 (k, 3, S, S), rows then columns.

    Rows are gathered straight from the uint8 tiles (contiguous runs of ``w``
    bytes) and weighted into float32; the column taps gather along the last axis.
    """
    k, _, h, w = planar.shape
    iy, wy = _taps(h, size)
    ix, wx = _taps(w, size)
    if h == size and iy.shape[1] == 1:  # identity rows
        rows = planar.astype(np.float32)
    else:
        rows = np.multiply(planar[:, :, iy[:, 0]], wy[:, 0].reshape(1, 1, size, 1), dtype=np.float32)
        for j in range(1, iy.shape[1]):
            rows += np.multiply(planar[:, :, iy[:, j]], wy[:, j].reshape(1, 1, size, 1), dtype=np.float32)
    if w == size and ix.shape[1] == 1:  # identity columns
        return rows
    out = np.take(rows, ix[:, 0], axis=3)
    out *= wx[:, 0]
    for j in range(1, ix.shape[1]):
        term = np.take(rows, ix[:, j], axis=3)
        term *= wx[:, j]
        out += term
    return out
