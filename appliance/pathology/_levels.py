"""What every slide reader offers the pipeline: pyramid levels and region reads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from appliance.errors import JobFailed
from appliance.findings import SourceImage

__all__ = ["Level", "SlideReader", "nearest_level"]


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and microns per pixel."""

    index: int  #: position in the reader's ``levels``, 0 the finest
    width: int
    height: int
    mpp: float  #: microns per pixel (column spacing)
    source: SourceImage  #: the instance (or file) this level comes from
    pixel_spacing_mm: tuple[float, float]  #: (row, column) spacing


class SlideReader(Protocol):
    """A readable slide: levels finest first, regions as RGB uint8."""

    @property
    def levels(self) -> Sequence[Level]: ...

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of ``level``; white outside the level."""
        ...

    def close(self) -> None: ...


def nearest_level(levels: Sequence[Level], mpp: float) -> Level:
    """The level whose microns per pixel is nearest ``mpp`` on a log scale."""
    if not levels:
        raise JobFailed("the slide has no usable pyramid level")
    if mpp <= 0:
        raise JobFailed(f"the model's mpp must be positive, got {mpp}")
    return min(levels, key=lambda lv: (abs(math.log(lv.mpp / mpp)), lv.mpp))
