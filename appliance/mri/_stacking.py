"""The geometry of a DCE study's phases: slices ordered along the normal, phases checked against each other.

Slices are sorted by their position along the slice normal (the cross product
of the Image Orientation (Patient) row and column cosines, C.7.6.2.1.1);
orientation, pixel spacing, matrix and slice positions must agree across
phases within a tolerance, else :class:`StudyIncomplete` names the series and
the problem.
"""

from __future__ import annotations

import numpy as np

from appliance.errors import StudyIncomplete
from appliance.mri._frames import Frame, series_label

__all__ = [
    "ORIENTATION_TOLERANCE", "SPACING_TOLERANCE", "check_against", "same_image", "slice_normal", "slice_spacing",
    "stack",
]

ORIENTATION_TOLERANCE = 1e-3  #: direction cosines
SPACING_TOLERANCE = 1e-3  #: relative, pixel spacing


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:6])


def same_image(a: Frame, b: Frame) -> bool:
    return (a.pixels.shape == b.pixels.shape and a.slope == b.slope and a.intercept == b.intercept
            and a.time_s == b.time_s and bool(np.array_equal(a.pixels, b.pixels)))


def stack(label: str, frames: list[Frame], tolerance_mm: float) -> tuple[list[Frame], np.ndarray]:
    """Sort one phase's frames along the slice normal; drop exact duplicates; return frames and positions."""
    orientation = frames[0].orientation
    for frame in frames:
        if np.max(np.abs(frame.orientation - orientation)) > ORIENTATION_TOLERANCE:
            raise StudyIncomplete(f"{series_label(frame)}, phase {label!r}: Image Orientation (Patient) "
                                  f"{frame.orientation.tolist()} differs from {orientation.tolist()} within the phase")
    normal = slice_normal(orientation)
    ordered = sorted(frames, key=lambda f: float(f.position @ normal))
    unique: list[Frame] = []
    for frame in ordered:
        if unique and abs(float((frame.position - unique[-1].position) @ normal)) <= tolerance_mm:
            if same_image(frame, unique[-1]):
                continue
            raise StudyIncomplete(
                f"{series_label(frame)}, phase {label!r}: two different images at slice position "
                f"{float(frame.position @ normal):.2f} mm")
        unique.append(frame)
    depths = np.asarray([float(f.position @ normal) for f in unique])
    return unique, depths


def check_against(label: str, frames: list[Frame], depths: np.ndarray, ref_label: str, ref: list[Frame],
                   ref_depths: np.ndarray, tolerance_mm: float) -> None:
    r, f = ref[0], frames[0]
    where = f"{series_label(f)}, phase {label!r}"
    for frame in frames:
        if (frame.rows, frame.columns) != (r.rows, r.columns):
            raise StudyIncomplete(f"{where}: matrix {frame.rows}x{frame.columns} differs from "
                                  f"{r.rows}x{r.columns} of phase {ref_label!r}")
        if np.max(np.abs(frame.orientation - r.orientation)) > ORIENTATION_TOLERANCE:
            raise StudyIncomplete(f"{where}: orientation {frame.orientation.tolist()} differs from "
                                  f"{r.orientation.tolist()} of phase {ref_label!r}")
        if not np.allclose(frame.pixel_spacing, r.pixel_spacing, rtol=SPACING_TOLERANCE, atol=0):
            raise StudyIncomplete(f"{where}: pixel spacing {frame.pixel_spacing} differs from "
                                  f"{r.pixel_spacing} of phase {ref_label!r}")
    if len(frames) != len(ref):
        raise StudyIncomplete(f"{where}: {len(frames)} slices, phase {ref_label!r} has {len(ref)}")
    shift = float(np.max(np.abs(depths - ref_depths)))
    in_plane = float(np.max(np.abs(np.stack([x.position for x in frames]) - np.stack([x.position for x in ref]))))
    if shift > tolerance_mm or in_plane > tolerance_mm:
        raise StudyIncomplete(f"{where}: slice positions differ from phase {ref_label!r} by up to "
                              f"{max(shift, in_plane):.3f} mm (tolerance {tolerance_mm} mm)")


def slice_spacing(label: str, frames: list[Frame], depths: np.ndarray, tolerance_mm: float) -> float:
    if len(depths) < 2:
        return float(frames[0].pixel_spacing[0])
    gaps = np.diff(depths)
    spacing = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - spacing)))
    if abs(gaps[worst] - spacing) > tolerance_mm:
        raise StudyIncomplete(f"{series_label(frames[0])}, phase {label!r}: slice spacing not uniform: gap of "
                              f"{gaps[worst]:.2f} mm after slice {worst + 1} where {spacing:.2f} mm is usual "
                              "(missing or extra slice)")
    return spacing
