"""Reading a DICOM WSI series as stored by the node (PS3.3 A.32.8, C.8.12.4).

The series' instances are grouped into pyramid levels by Total Pixel Matrix
size; LABEL, OVERVIEW and THUMBNAIL images (Image Type value 3) are set
aside. Pixel spacing comes from the Shared Functional Groups' Pixel
Measures. Frames are located once per instance (the encapsulated item
headers, PS3.5 A.4, or the fixed frame size of native syntaxes) and read
with ``os.pread``, so reads are thread-safe and never load a whole level.
TILED_FULL frames map to tiles by position (PS3.3 C.7.6.17.3); TILED_SPARSE
frames by their Plane Position (Slide) in the per-frame functional groups. A
level split into several instances by Concatenation is one level (frames at
their Concatenation Frame Offset Number). One optical path (the one asked
for, else the first) and the first focal plane are read. Headers as
converters write them (Image Type or Frame of Reference missing) are read
when the geometry is unambiguous (see :func:`_spacing_mm`).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian, VLWholeSlideMicroscopyImageStorage

from appliance.errors import JobFailed
from appliance.findings import SourceImage
from appliance.pathology._codecs import NATIVE, SUPPORTED_TRANSFER_SYNTAXES, decode_frame
from appliance.pathology._levels import Level

__all__ = ["DicomSlide", "WSI_SOP_CLASS", "optical_paths"]

logger = logging.getLogger(__name__)

WSI_SOP_CLASS: str = VLWholeSlideMicroscopyImageStorage
_NOT_PYRAMID = {"LABEL", "OVERVIEW", "THUMBNAIL"}
_ITEM, _SEQ_DELIM = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
_WHITE = 255


@dataclass
class _Instance:
    path: Path
    ds: Dataset  #: without Pixel Data
    ts: str
    frames: list[tuple[int, int]]  #: (file offset, length) of each frame's bytes
    fd: int  #: open descriptor, read with os.pread


def _frame_table(f: BinaryIO, path: Path, ds: Dataset, ts: str) -> list[tuple[int, int]]:
    """Offsets and lengths of every frame of an instance, from the Pixel Data header on."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    head = f.read(12)
    if len(head) < 8 or struct.unpack("<HH", head[:4]) != (0x7FE0, 0x0010):
        raise JobFailed(f"{path.name}: no Pixel Data element")
    if ts == ImplicitVRLittleEndian:  # implicit VR: tag, 4-byte length
        length, start = struct.unpack("<I", head[4:8])[0], f.tell() - 4
    else:  # explicit VR OB/OW: tag, VR, 2 reserved, 4-byte length
        length, start = struct.unpack("<I", head[8:12])[0], f.tell()
    size = path.stat().st_size
    if ts in NATIVE:
        bits = int(ds.BitsAllocated)
        fb = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * bits // 8
        if start + n * fb > size:
            raise JobFailed(f"{path.name}: pixel data truncated ({size - start} of {n * fb} bytes)")
        return [(start + i * fb, fb) for i in range(n)]
    if length != 0xFFFFFFFF:
        raise JobFailed(f"{path.name}: encapsulated pixel data must have undefined length")
    items: list[tuple[int, int]] = []
    pos = start
    while True:
        hdr = os.pread(f.fileno(), 8, pos)
        if len(hdr) < 8:
            raise JobFailed(f"{path.name}: pixel data truncated after {len(items)} items")
        g, e, ln = struct.unpack("<HHI", hdr)
        if (g, e) == _SEQ_DELIM:
            break
        if (g, e) != _ITEM:
            raise JobFailed(f"{path.name}: bad item tag ({g:04X},{e:04X}) in pixel data")
        if pos + 8 + ln > size:
            raise JobFailed(f"{path.name}: frame item {len(items)} truncated")
        items.append((pos + 8, ln))
        pos += 8 + ln
    bot, fragments = items[0], items[1:]
    if len(fragments) == n:
        return fragments
    if bot[1] >= 4 * n:  # several fragments per frame: group by the Basic Offset Table
        offs = struct.unpack(f"<{n}I", os.pread(f.fileno(), 4 * n, bot[0]))
        first = fragments[0][0] - 8
        frames = []
        for i in range(n):
            lo = first + offs[i]
            hi = first + offs[i + 1] if i + 1 < n else pos
            parts = [fr for fr in fragments if lo <= fr[0] - 8 < hi]
            frames.append((parts[0][0], -len(parts)))  # negative: count of fragments
        return frames
    raise JobFailed(f"{path.name}: {len(fragments)} fragments for {n} frames and no offset table")


def _image_type(ds: Dataset) -> list[str]:
    it = ds.get("ImageType", [])
    return [str(v).upper() for v in (it if isinstance(it, (list, tuple, pydicom.multival.MultiValue)) else [it])]


def _measures_spacing(groups: Sequence[Dataset] | None) -> tuple[float, float] | None:
    try:
        pm = groups[0].PixelMeasuresSequence[0]  # type: ignore[index]
        row, col = float(pm.PixelSpacing[0]), float(pm.PixelSpacing[1])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 else None


def _spacing_mm(ds: Dataset, name: str) -> tuple[float, float]:
    """(row, column) spacing in mm: Pixel Measures of the shared, else the first per-frame functional group.

    Converters that write no Pixel Measures still give Imaged Volume Width/Height: used when both
    agree on one square spacing; otherwise the geometry is ambiguous and the level is refused.
    """
    found = (_measures_spacing(ds.get("SharedFunctionalGroupsSequence"))
             or _measures_spacing(ds.get("PerFrameFunctionalGroupsSequence")))
    volume = None
    cols, rows = int(ds.get("TotalPixelMatrixColumns", 0) or 0), int(ds.get("TotalPixelMatrixRows", 0) or 0)
    try:
        if ds.get("ImagedVolumeWidth") and ds.get("ImagedVolumeHeight") and cols and rows:
            volume = (float(ds.ImagedVolumeHeight) / rows, float(ds.ImagedVolumeWidth) / cols)
    except (TypeError, ValueError):
        volume = None
    if found is not None:
        if volume is not None and abs(volume[1] / found[1] - 1.0) > 0.01:
            logger.info("%s: Imaged Volume Width gives %.6f mm/px, Pixel Spacing %.6f: Pixel Spacing used",
                        name, volume[1], found[1])
        return found
    if volume is not None and abs(volume[0] / volume[1] - 1.0) <= 0.01:
        return volume
    if volume is not None:
        raise JobFailed(
            f"{name}: no Pixel Spacing in the shared or per-frame functional groups, and Imaged Volume "
            f"Width/Height give different spacings ({volume[1]:.6f} and {volume[0]:.6f} mm/px): geometry ambiguous"
        )
    raise JobFailed(
        f"{name}: no Pixel Spacing in the shared or per-frame functional groups and no Imaged Volume "
        f"Width/Height: the level's microns per pixel is unknown"
    )


def optical_paths(ds: Dataset) -> list[str]:
    """The Optical Path Identifiers of an instance, in its Optical Path Sequence order ([""] if none)."""
    ids = [str(item.get("OpticalPathIdentifier", "")) for item in ds.get("OpticalPathSequence", [])]
    return ids or [""]


def _frame_path(fg: Dataset, shared: str) -> str:
    try:
        return str(fg.OpticalPathIdentificationSequence[0].OpticalPathIdentifier)
    except (AttributeError, IndexError):
        return shared


class _LevelData:
    """Tile lookup for one level: (tile row, tile column) -> (instance, frame index).

    Only frames of ``optical_path`` and of the level's first focal plane are kept (TILED_FULL:
    by frame order, PS3.3 C.7.6.17.3; TILED_SPARSE: by Optical Path Identification and the Z
    offset of Plane Position (Slide)). Concatenated instances add their frames at their
    Concatenation Frame Offset Number.
    """

    def __init__(self, instances: list[_Instance], optical_path: str) -> None:
        self.instances = instances
        self.optical_path = optical_path
        ds = instances[0].ds
        self.tile_h, self.tile_w = int(ds.Rows), int(ds.Columns)
        self.width, self.height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
        self.across = (self.width + self.tile_w - 1) // self.tile_w
        self.down = (self.height + self.tile_h - 1) // self.tile_h
        self.tiles: dict[tuple[int, int], tuple[_Instance, int]] = {}
        self._z: float | None = None
        for inst in instances:
            kind = str(inst.ds.get("DimensionOrganizationType", "")).upper()
            per_frame = inst.ds.get("PerFrameFunctionalGroupsSequence")
            if kind == "TILED_SPARSE" or (kind != "TILED_FULL" and per_frame):
                if not per_frame:
                    raise JobFailed(f"{inst.path.name}: TILED_SPARSE without Per-frame Functional Groups")
                self._sparse(inst, per_frame)
                del inst.ds.PerFrameFunctionalGroupsSequence  # the table holds what was needed
            else:
                self._full(inst)

    def _full(self, inst: _Instance) -> None:
        plane = self.across * self.down
        focal = max(1, int(inst.ds.get("TotalPixelMatrixFocalPlanes", 1) or 1))
        path = optical_paths(inst.ds).index(self.optical_path)
        offset = int(inst.ds.get("ConcatenationFrameOffsetNumber", 0) or 0)
        first = path * focal * plane  # frames of the chosen path's first focal plane
        for i in range(max(0, first - offset), min(len(inst.frames), first + plane - offset)):
            k = offset + i - first
            self.tiles.setdefault((k // self.across, k % self.across), (inst, i))

    def _sparse(self, inst: _Instance, per_frame: Sequence[Dataset]) -> None:
        paths = optical_paths(inst.ds)
        shared_groups = inst.ds.get("SharedFunctionalGroupsSequence") or [Dataset()]
        shared = _frame_path(shared_groups[0], paths[0])
        for i, fg in enumerate(per_frame):
            if i >= len(inst.frames) or _frame_path(fg, shared) != self.optical_path:
                continue
            try:
                pos = fg.PlanePositionSlideSequence[0]
                r = int(pos.RowPositionInTotalImagePixelMatrix) - 1
                c = int(pos.ColumnPositionInTotalImagePixelMatrix) - 1
                z = float(pos.get("ZOffsetInSlideCoordinateSystem", 0.0) or 0.0)
            except (AttributeError, IndexError, TypeError, ValueError) as exc:
                raise JobFailed(f"{inst.path.name}: frame {i + 1} has no Plane Position (Slide)") from exc
            self._z = z if self._z is None else self._z
            if z == self._z:
                self.tiles.setdefault((r // self.tile_h, c // self.tile_w), (inst, i))


class DicomSlide:
    """A DICOM WSI series opened for reading; see the module docstring. Thread-safe reads."""

    def __init__(self, paths: Sequence[Path], sources: Sequence[SourceImage] | None = None,
                 threads: int = 1, cache_tiles: int | None = None, optical_path: str = "") -> None:
        self.threads = max(1, threads)
        self._files: list[BinaryIO] = []
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_size = cache_tiles if cache_tiles is not None else 64
        self._cache_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        skipped: list[str] = []
        try:
            opened = [inst for inst in (self._open(Path(p), skipped) for p in paths) if inst is not None]
            if not opened:
                raise JobFailed("the series has no usable pyramid level"
                                + (f" ({'; '.join(skipped[:4])})" if skipped else ""))
            self.optical_path = self._choose_path(opened, optical_path)
            self._build(opened, sources)
        except BaseException:
            self.close()
            raise
        if cache_tiles is None:  # two rows of frames: bands of model tiles straddle frame rows
            self._cache_size = min(1024, 2 * max(d.across for d in self._data) + 4)

    @staticmethod
    def _choose_path(opened: list[_Instance], wanted: str) -> str:
        """The optical path to read: ``wanted`` when given, else the first of the finest instance."""
        available = list(dict.fromkeys(p for inst in opened for p in optical_paths(inst.ds)))
        if wanted:
            if wanted not in available:
                raise JobFailed(f"optical path {wanted!r} is not in the slide; it has {', '.join(map(repr, available))}")
            return wanted
        finest = max(opened, key=lambda i: (int(i.ds.TotalPixelMatrixColumns) * int(i.ds.TotalPixelMatrixRows),
                                            -int(i.ds.get("ConcatenationFrameOffsetNumber", 0) or 0)))
        return optical_paths(finest.ds)[0]

    def _build(self, opened: list[_Instance], sources: Sequence[SourceImage] | None) -> None:
        by_size: dict[tuple[int, int], list[_Instance]] = {}
        for inst in opened:
            if self.optical_path not in optical_paths(inst.ds):
                continue  # another optical path's instance
            key = (int(inst.ds.TotalPixelMatrixColumns), int(inst.ds.TotalPixelMatrixRows))
            by_size.setdefault(key, []).append(inst)
        src_by_uid = {s.sop_instance_uid: s for s in sources or ()}
        order = sorted(by_size, key=lambda k: -k[0] * k[1])
        self._data: list[_LevelData] = []
        self._levels: list[Level] = []
        for index, key in enumerate(order):
            insts = sorted(by_size[key], key=lambda i: (int(i.ds.get("ConcatenationFrameOffsetNumber", 0) or 0),
                                                        str(i.ds.SOPInstanceUID)))
            name = f"level {key[0]}x{key[1]}"
            spacings = {tuple(round(v, 9) for v in _spacing_mm(i.ds, name)) for i in insts}
            if len(spacings) > 1:
                raise JobFailed(f"{name}: its instances give different pixel spacings {sorted(spacings)}: ambiguous")
            sp = _spacing_mm(insts[0].ds, name)
            first = insts[0]
            uid = str(first.ds.SOPInstanceUID)
            source = src_by_uid.get(uid) or SourceImage(
                study_uid=str(first.ds.get("StudyInstanceUID", "")), series_uid=str(first.ds.get("SeriesInstanceUID", "")),
                sop_instance_uid=uid, sop_class_uid=str(first.ds.SOPClassUID), path=first.path)
            data = _LevelData(insts, self.optical_path)
            self._data.append(data)
            self._levels.append(Level(index, data.width, data.height, sp[1] * 1000.0, source, sp))

    def _open(self, path: Path, skipped: list[str]) -> _Instance | None:
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise JobFailed(f"cannot open slide instance {path.name}: {exc}") from exc
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            if str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS:
                skipped.append(f"{path.name}: not VL Whole Slide Microscopy")
                fh.close()
                return None
            it = _image_type(ds)
            if len(it) > 2 and it[2] in _NOT_PYRAMID:
                fh.close()
                return None
            ts = str(ds.file_meta.TransferSyntaxUID)
            if ts not in SUPPORTED_TRANSFER_SYNTAXES:
                skipped.append(f"{path.name}: transfer syntax {ts} not supported")
                fh.close()
                return None
            frames = _frame_table(fh, path, ds, ts)
        except JobFailed:
            fh.close()
            raise
        except Exception as exc:
            fh.close()
            raise JobFailed(f"cannot read slide instance {path.name}: {exc}") from exc
        self._files.append(fh)
        return _Instance(path, ds, ts, frames, fh.fileno())

    @property
    def levels(self) -> Sequence[Level]:
        return self._levels

    def _tile(self, level: int, row: int, col: int) -> np.ndarray | None:
        key = (level, row, col)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        d = self._data[level]
        found = d.tiles.get((row, col))
        if found is None:
            return None
        inst, i = found
        off, ln = inst.frames[i]
        fd = inst.fd
        if ln < 0:  # several fragments: concatenate their values
            parts, pos = [], off - 8
            for _ in range(-ln):
                _, _, n = struct.unpack("<HHI", os.pread(fd, 8, pos))
                parts.append(os.pread(fd, n, pos + 8))
                pos += 8 + n
            data = b"".join(parts)
        else:
            data = os.pread(fd, ln, off)
            if len(data) < ln:
                raise JobFailed(f"{inst.path.name}: frame {i + 1} truncated")
        ds = inst.ds
        px = decode_frame(data, inst.ts, str(ds.PhotometricInterpretation), d.tile_h, d.tile_w,
                          int(ds.SamplesPerPixel), int(ds.BitsAllocated), int(ds.get("PlanarConfiguration", 0) or 0))
        if px.shape[:2] != (d.tile_h, d.tile_w):
            raise JobFailed(f"{inst.path.name}: frame {i + 1} decodes to {px.shape[:2]}, expected {(d.tile_h, d.tile_w)}")
        with self._cache_lock:
            self._cache[key] = px
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return px

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of ``level``; white where no frame covers it."""
        d = self._data[level]
        out = np.full((height, width, 3), _WHITE, np.uint8)
        r0, r1 = max(0, y // d.tile_h), min(d.down - 1, (y + height - 1) // d.tile_h)
        c0, c1 = max(0, x // d.tile_w), min(d.across - 1, (x + width - 1) // d.tile_w)
        keys = [(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
        if self._pool is not None and len(keys) > 1:
            tiles = list(self._pool.map(lambda rc: self._tile(level, *rc), keys))
        else:
            tiles = [self._tile(level, r, c) for r, c in keys]
        for (r, c), px in zip(keys, tiles):
            if px is None:
                continue
            ty, tx = r * d.tile_h, c * d.tile_w
            ya, yb = max(y, ty), min(y + height, ty + d.tile_h, d.height)
            xa, xb = max(x, tx), min(x + width, tx + d.tile_w, d.width)
            if ya < yb and xa < xb:
                out[ya - y : yb - y, xa - x : xb - x] = px[ya - ty : yb - ty, xa - tx : xb - tx]
        return out

    def close(self) -> None:
        for fh in self._files:
            fh.close()
        self._files = []
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __enter__(self) -> "DicomSlide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
