"""Slide reading benchmark: our DICOM WSI reader vs openslide on the same slide as a JPEG TIFF.

    .venv/bin/python bench/read.py [--quick] [--keep DIR]

One synthetic slide is written twice with the same 256 px tiles and JPEG
quality: a DICOM WSI pyramid (JPEG baseline frames) and a pyramidal tiled
TIFF. Every 256 x 256 tile of level 0 is read and decoded to RGB, in 1 and 2
threads, by both readers in the same run. Goal: ours >= 1x openslide.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from appliance.pathology._openslide import OpenSlideReader
from appliance.pathology._wsi import DicomSlide
from export.synthetic.slide import make_slide, write_dicom_wsi, write_tiff

TILE = 256


def rate(read: Callable[[int, int], np.ndarray], coords: list[tuple[int, int]], threads: int) -> float:
    t = time.perf_counter()
    if threads == 1:
        for x, y in coords:
            read(x, y)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(lambda xy: read(*xy), coords, chunksize=16):
                pass
    return len(coords) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 4096 px slide instead of 12288 px")
    ap.add_argument("--keep", type=Path, help="write the slides here (default: a temporary folder)")
    args = ap.parse_args()
    side = 4096 if args.quick else 12288
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        slide = make_slide(11, side, side, True)
        t = time.perf_counter()
        dicom = write_dicom_wsi(slide, root / "dicom", levels=2, extras=False)
        tiff = write_tiff(slide, root / "slide.tiff", levels=2)
        print(f"slide {side}x{side}, {TILE} px JPEG tiles, written in {time.perf_counter() - t:.1f} s")
        coords = [(x, y) for y in range(0, side, TILE) for x in range(0, side, TILE)]
        print("openslide: through our OpenSlideReader (RGBA composited to RGB) and raw read_region (RGBA)")
        print(f"{'threads':>8}{'ours tiles/s':>14}{'openslide tiles/s':>19}{'raw openslide':>15}{'ratio':>8}{'vs raw':>8}")
        for threads in (1, 2):
            with DicomSlide(dicom, cache_tiles=0) as ours, OpenSlideReader(tiff) as theirs:
                a = ours.read_region(0, 512, 512, TILE, TILE).astype(int)
                b = theirs.read_region(0, 512, 512, TILE, TILE).astype(int)
                assert np.abs(a - b).mean() < 4, "the two files must hold the same pixels"
                r_theirs = rate(lambda x, y: theirs.read_region(0, x, y, TILE, TILE), coords, threads)
                raw = theirs._slide
                r_raw = rate(lambda x, y: np.asarray(raw.read_region((x, y), 0, (TILE, TILE))), coords, threads)
                r_ours = rate(lambda x, y: ours.read_region(0, x, y, TILE, TILE), coords, threads)
            print(f"{threads:>8}{r_ours:>14.0f}{r_theirs:>19.0f}{r_raw:>15.0f}"
                  f"{r_ours / r_theirs:>7.2f}x{r_ours / r_raw:>7.2f}x")


if __name__ == "__main__":
    main()
