"""Vendor slide formats (SVS, NDPI, MRXS, generic tiled TIFF) through openslide."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from appliance.errors import JobFailed
from appliance.findings import SourceImage
from appliance.pathology._levels import Level

__all__ = ["OpenSlideReader"]


class OpenSlideReader:
    """A slide file opened with openslide; levels finest first, regions over white."""

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        try:
            import openslide
        except ImportError as exc:  # openslide-bin missing on this machine
            raise JobFailed(f"openslide is not available to read {Path(path).name}: {exc}") from exc
        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            raise JobFailed(f"openslide cannot read {self.path.name}: {exc}") from exc
        props = self._slide.properties
        base_mpp = mpp
        if base_mpp is None:
            raw = props.get("openslide.mpp-x")
            if raw is None:
                self.close()
                raise JobFailed(
                    f"{self.path.name} has no microns-per-pixel (openslide.mpp-x); pass the slide's mpp explicitly"
                )
            base_mpp = float(raw)
        source = SourceImage(study_uid="", series_uid="", sop_instance_uid="", sop_class_uid="", path=self.path)
        self._downsamples = list(self._slide.level_downsamples)
        self._levels = []
        for i, ((w, h), ds) in enumerate(zip(self._slide.level_dimensions, self._downsamples)):
            lmpp = base_mpp * ds
            self._levels.append(Level(i, int(w), int(h), lmpp, source, (lmpp / 1000.0, lmpp / 1000.0)))

    @property
    def levels(self) -> Sequence[Level]:
        return self._levels

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3); openslide's transparent outside is composited on white."""
        ds = self._downsamples[level]
        try:
            img = self._slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (width, height))
        except Exception as exc:
            raise JobFailed(f"openslide failed reading {self.path.name} level {level}: {exc}") from exc
        rgba = np.asarray(img)
        if rgba[..., 3].min() == 255:  # fully inside the scanned area
            return np.ascontiguousarray(rgba[..., :3])
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)) // 255
        return rgb.astype(np.uint8)

    def close(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            del self._slide

    def __enter__(self) -> "OpenSlideReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
