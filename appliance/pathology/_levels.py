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


def nearest_level(levels: Sequence[Level], mpp: float, tolerance: float | None = None) -> Level:
    """The level whose microns per pixel is nearest ``mpp`` on a log scale.

    With ``tolerance``, levels coarser than ``mpp * (1 + tolerance)`` are never chosen (reading them
    would upsample: invent detail the pathologist never saw); when the finest level is such, the
    slide is refused with the reason.
    """
    if not levels:
        raise JobFailed("the slide has no usable pyramid level")
    if mpp <= 0:
        raise JobFailed(f"the model's mpp must be positive, got {mpp}")
    usable = list(levels)
    if tolerance is not None:
        usable = [lv for lv in levels if lv.mpp <= mpp * (1.0 + tolerance)]
        if not usable:
            finest = min(levels, key=lambda lv: lv.mpp)
            raise JobFailed(
                f"the slide's finest level is {finest.mpp:.3f} um/px, coarser than the model's {mpp:g} um/px "
                f"beyond the {tolerance:.0%} tolerance; the slide is not upsampled (that would invent detail), "
                f"scan it at {mpp:g} um/px or finer"
            )
    return min(usable, key=lambda lv: (abs(math.log(lv.mpp / mpp)), lv.mpp))
