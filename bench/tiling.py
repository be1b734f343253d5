"""Tiling kernel benchmark: NumPy reference vs a per-tile PIL loop, same tiles, one run.

    .venv/bin/python bench/tiling.py [--quick]

Both produce the model batch (resize to the tile size with BILINEAR, scale to
0..1, normalize by mean/std, NCHW float32); the reference also measures each
tile's tissue fraction. Goal: reference >= 10x the PIL loop.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from engines.kernels import tile_batch
from export.synthetic.tissue import render_tile

MEAN, STD = (0.70, 0.55, 0.70), (0.20, 0.22, 0.18)


def pil_loop(region: np.ndarray, rects: np.ndarray, size: int) -> np.ndarray:
    mean, std = np.float32(MEAN), np.float32(STD)
    out = np.empty((len(rects), 3, size, size), np.float32)
    for i, (x, y, w, h) in enumerate(rects):
        im = Image.fromarray(region[y : y + h, x : x + w]).resize((size, size), Image.BILINEAR)
        out[i] = ((np.asarray(im, np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
    return out


def best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller region, fewer repeats")
    args = ap.parse_args()
    side = 1024 if args.quick else 2048
    repeats = 2 if args.quick else 3
    rng = np.random.default_rng(0)
    cell = 256
    region = np.concatenate([
        np.concatenate([render_tile(rng, cell, (i + j) % 3 == 0) for j in range(side // cell)], 1)
        for i in range(side // cell)], 0)
    size = 224
    print(f"region {side}x{side} RGB; output {size}x{size} NCHW float32; best of {repeats}")
    print(f"{'case':<26}{'tiles':>6}{'PIL loop ms':>13}{'reference ms':>14}{'ratio':>8}{'max |diff|':>12}")
    for name, tile_px in (("downscale 256->224", 256), ("identity 224->224", 224), ("downscale 448->224", 448),
                          ("upscale 112->224", 112)):
        n = side // tile_px
        rects = np.array([(c * tile_px, r * tile_px, tile_px, tile_px) for r in range(n) for c in range(n)])
        ref = tile_batch(region, rects, size, MEAN, STD).images
        pil = pil_loop(region, rects, size)
        t_pil = best_of(lambda: pil_loop(region, rects, size), repeats)
        t_ref = best_of(lambda: tile_batch(region, rects, size, MEAN, STD), repeats)
        diff = float(np.abs(ref - pil).max())
        print(f"{name:<26}{len(rects):>6}{t_pil * 1e3:>13.1f}{t_ref * 1e3:>14.1f}{t_pil / t_ref:>7.2f}x{diff:>12.4f}")


if __name__ == "__main__":
    main()
