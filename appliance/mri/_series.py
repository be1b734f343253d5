"""Which series of a job make the dynamic: subtraction, derived and odd-geometry series are left out.

A breast MRI job holds every series of the study that its route took: the
dynamic, but often also subtraction images (Image Type value 3 SUBTRACTION,
PS3.3 C.8.3.1.1.1), motion-corrected or projected (MIP) copies marked
DERIVED, a T2 series or a localizer of another orientation or matrix. Each
series left out is named, with the reason, in ``notes`` (the report shows them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from appliance.errors import StudyIncomplete
from appliance.mri._frames import Frame, series_label

#: Series Descriptions of subtraction, projection and parametric series (matched anywhere, case-insensitive)
DERIVED_DESCRIPTIONS = r"\bsub\b|subtract|\bmip\b|\bmpr\b|\bsubs\b|_sub\b"


def _geometry_key(frames: list[Frame]) -> tuple[object, ...]:
    f = frames[0]
    return (tuple(np.round(f.orientation, 2).tolist()), f.rows, f.columns)


def _describe_geometry(frames: list[Frame]) -> str:
    f = frames[0]
    return f"orientation {np.round(f.orientation, 3).tolist()}, matrix {f.rows}x{f.columns}"


def leave_out_odd_geometry(by_series: dict[str, list[Frame]], notes: list[str]) -> dict[str, list[Frame]]:
    """With several series, keep those sharing the most common orientation and matrix (most series, then
    most images; a T2 or a localizer in the job is left out); each series left out is named in ``notes``."""
    if len(by_series) < 2:
        return by_series
    weight: dict[tuple[object, ...], tuple[int, int]] = {}
    for frames in by_series.values():
        n_series, n_frames = weight.get(_geometry_key(frames), (0, 0))
        weight[_geometry_key(frames)] = (n_series + 1, n_frames + len(frames))
    dominant = max(weight, key=lambda k: weight[k])  # most series, then most images
    kept = {uid: frs for uid, frs in by_series.items() if _geometry_key(frs) == dominant}
    reference = next(iter(kept.values()))
    for frames in by_series.values():
        if _geometry_key(frames) != dominant:
            notes.append(f"left out {series_label(frames[0])}: {_describe_geometry(frames)} differs from "
                         f"{_describe_geometry(reference)} of the other series")
    return kept


def _joined(values: Sequence[str]) -> str:
    return "\\".join(values)


def leave_out_derived(by_series: dict[str, list[Frame]], notes: list[str], descriptions: str
                       ) -> dict[str, list[Frame]]:
    """Leave out subtraction series (Image Type SUBTRACTION or a matching Series Description), and derived
    series when original ones remain; each is named in ``notes``."""
    rule = re.compile(descriptions, re.IGNORECASE) if descriptions else None
    kept: dict[str, list[Frame]] = {}
    for uid, frames in by_series.items():
        first = frames[0]
        if "SUBTRACTION" in first.image_type:
            notes.append(f"left out {series_label(first)}: a subtraction series (Image Type "
                         f"{_joined(first.image_type)})")
        elif rule is not None and rule.search(first.series_description):
            notes.append(f"left out {series_label(first)}: its Series Description matches the derived-series rule "
                         f"{descriptions!r}")
        else:
            kept[uid] = frames
    original = {uid: f for uid, f in kept.items() if not f[0].image_type or f[0].image_type[0] != "DERIVED"}
    if original and len(original) < len(kept):
        for uid, frames in kept.items():
            if uid not in original:
                notes.append(f"left out {series_label(frames[0])}: a derived series (Image Type "
                             f"{_joined(frames[0].image_type)}) beside original ones")
        kept = original
    if not kept:
        raise StudyIncomplete("every series of the job is a subtraction or derived series: "
                              + "; ".join(notes))
    return kept
