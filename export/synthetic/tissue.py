"""H&E-like synthetic tissue tiles.

Haematoxylin stains nuclei blue-purple, eosin stains stroma and cytoplasm
pink. Normal tissue here is loose pink stroma with sparse, small, pale,
spindle-shaped nuclei; tumour is crowded with enlarged, hyperchromatic
(dark), pleomorphic (variable size and shape) nuclei. Everything is
vectorised: nuclei sit one per cell of a jittered grid, so each pixel only
has to look at the nuclei of its own and its eight neighbouring cells.
"""

from __future__ import annotations

import numpy as np

__all__ = ["render_tile", "GLASS_RGB"]

GLASS_RGB = np.array([242.0, 241.0, 245.0])
_EOSIN_RGB = np.array([232.0, 158.0, 196.0])
_EOSIN_DARK_RGB = np.array([205.0, 110.0, 165.0])
_LUMEN_RGB = np.array([246.0, 228.0, 240.0])
_HEMATOXYLIN_PALE = np.array([128.0, 92.0, 170.0])
_HEMATOXYLIN_DARK = np.array([52.0, 28.0, 100.0])


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small 2-D grid to size x size."""
    gy, gx = grid.shape
    ys = np.linspace(0, gy - 1, size)
    xs = np.linspace(0, gx - 1, size)
    y0 = np.floor(ys).astype(np.intp).clip(0, gy - 2)
    x0 = np.floor(xs).astype(np.intp).clip(0, gx - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    out: np.ndarray = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    return out


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], about `cells` blobs across."""
    return _upsample(rng.random((cells + 2, cells + 2)), size)


def _nuclei(rng: np.random.Generator, size: int, tumour: bool) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus coverage alpha in [0, 1] and darkness in [0, 1] per pixel."""
    if tumour:
        cell, presence, r_lo, r_hi, ecc_hi = 15, 0.95, 5.0, 8.0, 1.7
        dark_lo, dark_hi = 0.65, 1.0
    else:
        cell, presence, r_lo, r_hi, ecc_hi = 22, 0.35, 3.0, 4.5, 2.8
        dark_lo, dark_hi = 0.1, 0.4
    n = size // cell + 2
    shape = (n, n)
    present = rng.random(shape) < presence
    cy = ((np.arange(n)[:, None] - 1 + rng.random(shape)) * cell).astype(np.float32)
    cx = ((np.arange(n)[None, :] - 1 + rng.random(shape)) * cell).astype(np.float32)
    radius = rng.uniform(r_lo, r_hi, shape)
    if tumour:  # pleomorphism: a heavy tail of giant nuclei
        radius *= np.where(rng.random(shape) < 0.15, rng.uniform(1.2, 1.45, shape), 1.0)
    ecc = rng.uniform(1.0, ecc_hi, shape)
    theta = rng.uniform(0, np.pi, shape)
    darkness = rng.uniform(dark_lo, dark_hi, shape)
    # Per-nucleus constants, float32 so the 9 full-image passes stay cheap.
    cos_t = np.cos(theta).astype(np.float32)
    sin_t = np.sin(theta).astype(np.float32)
    inv_u = (1.0 / (radius * np.sqrt(ecc))).astype(np.float32)
    inv_v = (np.sqrt(ecc) / radius).astype(np.float32)
    on = present.astype(np.float32)

    yy = np.arange(size, dtype=np.float32)[:, None]
    xx = np.arange(size, dtype=np.float32)[None, :]
    iy = (np.arange(size) // cell + 1)[:, None]
    ix = (np.arange(size) // cell + 1)[None, :]
    alpha = np.zeros((size, size), np.float32)
    dark = np.zeros((size, size), np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            jy = np.clip(iy + dy, 0, n - 1)
            jx = np.clip(ix + dx, 0, n - 1)
            ddy = yy - cy[jy, jx]
            ddx = xx - cx[jy, jx]
            c, s = cos_t[jy, jx], sin_t[jy, jx]
            u = (ddx * c + ddy * s) * inv_u[jy, jx]
            v = (ddy * c - ddx * s) * inv_v[jy, jx]
            rho = np.sqrt(u * u + v * v)
            a = np.clip((1.25 - rho) * 4.0, 0.0, 1.0) * on[jy, jx]
            take = a > alpha
            alpha = np.where(take, a, alpha)
            dark = np.where(take, darkness[jy, jx], dark)
    return alpha, dark


def render_tile(
    rng: np.random.Generator, size: int, tumour: bool, tissue_fraction: float = 1.0
) -> np.ndarray:
    """Render one H&E-like RGB tile, uint8 of shape (size, size, 3).

    `tissue_fraction` below 1 leaves that share of the tile as near-white
    glass, with a smooth, irregular tissue edge.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if not 0.0 <= tissue_fraction <= 1.0:
        raise ValueError(f"tissue_fraction must be in [0, 1], got {tissue_fraction}")
    blobs = max(2, size // 48)
    # Stroma: eosin with fibre-like streaks and patchy density.
    density = _smooth_noise(rng, size, blobs)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    freq = rng.uniform(0.15, 0.3)
    warp = _smooth_noise(rng, size, blobs) * 12.0
    fibres = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle) + warp) * freq)
    t = np.clip(0.25 + 0.45 * density + 0.3 * fibres * (0.3 if tumour else 1.0), 0, 1)[..., None]
    img = _EOSIN_RGB * (1 - t) + _EOSIN_DARK_RGB * t
    # Pale lumen / loose areas in normal tissue, cytoplasm crowding in tumour.
    lumen = np.clip((_smooth_noise(rng, size, blobs) - (0.8 if tumour else 0.62)) * 5.0, 0, 1)
    img = img * (1 - lumen[..., None]) + _LUMEN_RGB * lumen[..., None]
    if tumour:
        img = img * 0.93 + np.array([150.0, 90.0, 160.0]) * 0.07
    alpha, dark = _nuclei(rng, size, tumour)
    nucleus = _HEMATOXYLIN_PALE * (1 - dark[..., None]) + _HEMATOXYLIN_DARK * dark[..., None]
    chromatin = 1.0 + 0.12 * (rng.random((size, size)) - 0.5)
    img = img * (1 - alpha[..., None]) + nucleus * chromatin[..., None] * alpha[..., None]
    if tissue_fraction < 1.0:
        direction = rng.uniform(0, 2 * np.pi)
        ramp = (xx * np.cos(direction) + yy * np.sin(direction)) / size
        field = ramp + 0.35 * _smooth_noise(rng, size, blobs)
        if tissue_fraction <= 0.0:
            tissue = np.zeros((size, size))
        else:
            cut = np.quantile(field, 1.0 - tissue_fraction)
            tissue = np.clip((field - cut) * size / 3.0 + 0.5, 0, 1)
        glass = GLASS_RGB + rng.normal(0, 1.5, (size, size, 1))
        img = img * tissue[..., None] + glass * (1 - tissue[..., None])
    img = img + rng.normal(0, 3.0, img.shape)
    out: np.ndarray = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out
