"""A whole synthetic slide: tissue blobs, tumour regions, a pyramid of levels.

The slide is procedural: low-resolution masks (tissue, tumour) and a small
pool of textures from :func:`export.synthetic.tissue.render_tile`, so any
frame of any level can be rendered on its own, in any order, without the
slide ever being held in memory. :func:`write_dicom_wsi` writes it as a VL
Whole Slide Microscopy Image pyramid (PS3.3 A.32.8), :func:`write_tiff` as a
pyramidal tiled JPEG TIFF that openslide reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from engines.files import replace_durably, temporary_name
from export.errors import ExportError
from export.synthetic.tissue import GLASS_RGB, render_tile

__all__ = ["SyntheticSlide", "make_slide", "write_dicom_wsi", "write_tiff", "TRANSFER_SYNTAXES"]

#: transfer syntaxes write_dicom_wsi can encode frames in
TRANSFER_SYNTAXES = ("jpeg", "jpeg2000")

_POOL = 4  # textures per class
_TEXTURE_PX = 384  # texture size at level 0


@lru_cache(maxsize=4)
def _texture_pool(seed: int) -> np.ndarray:
    """(2, _POOL, P, P, 3) float32 textures, [0] normal and [1] tumour, at level 0."""
    rng = np.random.default_rng(seed)
    pool = np.empty((2, _POOL, _TEXTURE_PX, _TEXTURE_PX, 3), np.float32)
    for cls in (0, 1):
        for i in range(_POOL):
            pool[cls, i] = render_tile(rng, _TEXTURE_PX, bool(cls))
    pool.flags.writeable = False
    return pool


@lru_cache(maxsize=16)
def _textures_at(seed: int, downsample: int) -> np.ndarray:
    """The texture pool box-averaged by ``downsample`` (a power of two)."""
    pool = _texture_pool(seed)
    if downsample == 1:
        return pool
    p = _TEXTURE_PX // downsample
    out = pool[:, :, : p * downsample, : p * downsample].reshape(2, _POOL, p, downsample, p, downsample, 3)
    res: np.ndarray = out.mean(axis=(3, 5)).astype(np.float32)
    return res


def _ellipses(rng: np.random.Generator, shape: tuple[int, int], count: int, lo: float, hi: float,
              inside: np.ndarray | None = None, sharpness: float = 12.0) -> np.ndarray:
    """Union of ``count`` soft random ellipses on a grid of ``shape`` (values 0..1)."""
    gy, gx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    out = np.zeros(shape)
    for _ in range(count):
        if inside is not None and inside.max() > 0.5:
            ys, xs = np.nonzero(inside > 0.5)
            k = rng.integers(len(ys))
            cy, cx = float(ys[k]), float(xs[k])
        else:
            cy, cx = rng.uniform(0.25, 0.75) * shape[0], rng.uniform(0.25, 0.75) * shape[1]
        ry = rng.uniform(lo, hi) * shape[0]
        rx = rng.uniform(lo, hi) * shape[1]
        th = rng.uniform(0, np.pi)
        dy, dx = gy - cy, gx - cx
        u = (dx * np.cos(th) + dy * np.sin(th)) / rx
        v = (dy * np.cos(th) - dx * np.sin(th)) / ry
        out = np.maximum(out, np.clip((1.0 - np.sqrt(u * u + v * v)) * sharpness, 0, 1))
    return out


@dataclass(frozen=True)
class SyntheticSlide:
    """A procedural slide: ``width`` x ``height`` pixels at ``mpp`` microns per pixel."""

    width: int
    height: int
    mpp: float
    tumour: bool
    seed: int
    cell: int  #: level-0 pixels per mask cell
    tissue: np.ndarray = field(repr=False)  #: soft mask (rows, cols) over cells, 0..1
    tumour_mask: np.ndarray = field(repr=False)  #: soft mask over cells, 0..1, inside tissue

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) of a pyramid level, level 0 the base, each half the previous."""
        d = 2**level
        return (self.width + d - 1) // d, (self.height + d - 1) // d

    def levels_for(self, tile: int) -> int:
        """How many levels down to the first one fitting in about two tiles."""
        n = 1
        while max(self.level_size(n - 1)) > 2 * tile:
            n += 1
        return n

    def _mask_at(self, mask: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Bilinear lookup of a cell mask at level-0 pixel centres (ys rows, xs columns)."""
        fy = np.clip((ys + 0.5) / self.cell - 0.5, 0, mask.shape[0] - 1.001)
        fx = np.clip((xs + 0.5) / self.cell - 0.5, 0, mask.shape[1] - 1.001)
        y0, x0 = fy.astype(np.intp), fx.astype(np.intp)
        wy, wx = (fy - y0)[:, None], (fx - x0)[None, :]
        a = mask[y0][:, x0] * (1 - wx) + mask[y0][:, x0 + 1] * wx
        b = mask[y0 + 1][:, x0] * (1 - wx) + mask[y0 + 1][:, x0 + 1] * wx
        out: np.ndarray = a * (1 - wy) + b * wy
        return out

    def render(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of a region of ``level``; glass outside the slide."""
        d = 2**level
        ly = np.arange(y, y + h)
        lx = np.arange(x, x + w)
        ys, xs = ly * d + d / 2 - 0.5, lx * d + d / 2 - 0.5
        tissue = self._mask_at(self.tissue, ys, xs)
        tumour = self._mask_at(self.tumour_mask, ys, xs)
        tex = _textures_at(self.seed % 7, d)
        p = tex.shape[2]
        by, bx = (ly // p)[:, None], (lx // p)[None, :]
        pick = (by * 73856093 ^ bx * 19349663 ^ self.seed) % _POOL
        iy, ix = (ly % p)[:, None], (lx % p)[None, :]
        normal = tex[0][pick, iy, ix]
        img = normal if not self.tumour else normal + (tex[1][pick, iy, ix] - normal) * tumour[..., None]
        img = GLASS_RGB + (img - GLASS_RGB) * tissue[..., None]
        inside = ((ly * d) < self.height)[:, None] & ((lx * d) < self.width)[None, :]
        img = np.where(inside[..., None], img, GLASS_RGB)
        out: np.ndarray = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return out

    def frames(self, level: int, tile: int) -> Iterator[np.ndarray]:
        """The level's tiles, row-major, edge tiles padded with glass (TILED_FULL order)."""
        w, h = self.level_size(level)
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                yield self.render(level, tx, ty, tile, tile)


def make_slide(
    seed: int, width: int, height: int, tumour: bool, *, mpp: float = 0.5, blobs: int = 3
) -> SyntheticSlide:
    """A seeded slide with ``blobs`` tissue pieces and, when ``tumour``, tumour foci in them."""
    if width < 64 or height < 64:
        raise ExportError(f"slide must be at least 64x64 pixels, got {width}x{height}")
    if mpp <= 0:
        raise ExportError(f"mpp must be positive, got {mpp}")
    rng = np.random.default_rng(seed)
    cell = max(8, min(width, height) // 64)
    shape = ((height + cell - 1) // cell + 1, (width + cell - 1) // cell + 1)
    tissue = _ellipses(rng, shape, blobs, 0.12, 0.3)
    coarse = rng.random((shape[0] // 4 + 2, shape[1] // 4 + 2))
    noise = np.kron(coarse, np.ones((4, 4)))[: shape[0], : shape[1]]
    tissue = np.clip(tissue * (0.9 + 0.2 * noise), 0, 1)
    tissue[:, :2] = tissue[:2, :] = 0  # glass margins, as on a real slide
    tissue[:, -3:] = tissue[-3:, :] = 0
    if tumour:
        tm = _ellipses(rng, shape, 2, 0.06, 0.14, inside=tissue, sharpness=4.0) * (tissue > 0.5)
    else:
        tm = np.zeros(shape)
    return SyntheticSlide(width, height, mpp, tumour, seed, cell, tissue.astype(np.float32), tm.astype(np.float32))


def write_tiff(slide: SyntheticSlide, path: Path, *, tile: int = 256, levels: int | None = None,
               quality: int = 90) -> Path:
    """The slide as a pyramidal tiled JPEG TIFF (one IFD per level), readable by openslide."""
    import tifffile

    n = levels or slide.levels_for(tile)
    tmp = temporary_name(path)
    res = 1e4 / slide.mpp  # pixels per centimetre
    with tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for level in range(n):
            w, h = slide.level_size(level)
            tif.write(
                slide.frames(level, tile),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                resolution=(res / 2**level, res / 2**level),
                resolutionunit="CENTIMETER",
                subfiletype=0 if level == 0 else 1,
                description="synthetic H&E slide" if level == 0 else None,
                metadata=None,
            )
    replace_durably(tmp, path)  # fsync, rename, directory fsync
    return path


def write_dicom_wsi(
    slide: SyntheticSlide,
    out_dir: Path,
    *,
    transfer_syntax: str = "jpeg",
    tile: int = 256,
    levels: int | None = None,
    extras: bool = True,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYNTH-0001",
    mosaic: int = 1,
) -> list[Path]:
    """Write the slide as one DICOM WSI instance per level (plus LABEL and OVERVIEW when ``extras``).

    ``mosaic`` > 1 writes a slide that many times wider and higher, the slide's frames repeated
    (each encoded once): scanner-sized levels in seconds, for benchmarks and long jobs.
    """
    from export.synthetic._wsi_dicom import WsiWriter

    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ExportError(f"transfer_syntax must be one of {TRANSFER_SYNTAXES}, got {transfer_syntax!r}")
    writer = WsiWriter(slide, out_dir, transfer_syntax, tile, study_uid, series_uid, patient_id)
    n = levels or slide.levels_for(tile)
    if mosaic > 1:
        paths = [writer.write_mosaic_level(level, mosaic) for level in range(n)]
    else:
        paths = [writer.write_level(level) for level in range(n)]
    if extras:
        paths.append(writer.write_associated("LABEL"))
        paths.append(writer.write_associated("OVERVIEW"))
    return paths
