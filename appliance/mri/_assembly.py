"""Assemble a DCE-MRI study into one 4-D array (phase, z, y, x), whatever the encoding.

Three encodings (see ``export/synthetic/dce_dicom.py`` for examples):

1. one classic MR series holding every phase, told apart by Temporal Position
   Identifier (0020,0100) and Number of Temporal Positions (0020,0105)
   (PS3.3 C.8.3.1, MR Image Module); without them, the images at one
   slice position are ordered by Trigger Time, then Acquisition Date/Time;
2. one classic series per phase, ordered by acquisition time, or picked and
   ordered by Series Description rules (regular expressions, one per phase);
3. Enhanced MR multi-frame (A.36.2) with Temporal Position Index in each
   frame's Frame Content Sequence (C.7.6.16.2.2).

Slices are sorted by their position along the slice normal (the cross product
of the Image Orientation (Patient) row and column cosines, C.7.6.2.1.1);
orientation, pixel spacing, matrix and slice positions must agree across
phases within a tolerance; Rescale Slope/Intercept (or the Pixel Value
Transformation functional group) is applied. Exact duplicates (same SOP
Instance, or the same image again at one position) are ignored; anything else
inconsistent raises :class:`StudyIncomplete` naming the series and the problem.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from appliance.errors import StudyIncomplete
from appliance.mri._frames import ENHANCED_MR_IMAGE_STORAGE, Frame, frames_of, series_label

logger = logging.getLogger(__name__)

ORIENTATION_TOLERANCE = 1e-3  #: direction cosines
SPACING_TOLERANCE = 1e-3  #: relative, pixel spacing


@dataclass(frozen=True)
class SourceRef:
    """One instance the array was built from."""

    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path | None


@dataclass(frozen=True)
class Dce4D:
    """The assembled study: rescaled signal and the geometry it lies on."""

    array: np.ndarray  #: float32 (phase, z, y, x), rescaled values, slices ascending along the normal
    spacing_mm: tuple[float, float, float]  #: (z, y, x)
    orientation: tuple[float, ...]  #: Image Orientation (Patient), six cosines
    origin: tuple[float, float, float]  #: Image Position (Patient) of the first slice
    phase_labels: tuple[str, ...]  #: Series Description or "temporal position N" per phase
    phase_times_s: tuple[float | None, ...]  #: time of each phase relative to the first; None when unknown
    encoding: str  #: single_series | series_per_phase | enhanced
    series_uids: tuple[str, ...]
    sources: tuple[SourceRef, ...]
    notes: tuple[str, ...] = ()  #: series left out, and why


def _dedupe_instances(instances: Iterable[tuple[Path | None, Dataset]]) -> list[tuple[Path | None, Dataset]]:
    """Drop exact re-sends of an instance; a SOP Instance UID with two different contents is an error."""
    seen: dict[str, tuple[Path | None, Dataset]] = {}
    for path, ds in instances:
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in seen:
            first = seen[uid][1]
            if first.get("PixelData") != ds.get("PixelData") or first.get("ImagePositionPatient") != ds.get(
                "ImagePositionPatient"
            ):
                raise StudyIncomplete(
                    f"series {ds.get('SeriesInstanceUID', '?')}: instance {uid} was received twice with different "
                    "content; resend the series"
                )
            continue
        seen[uid] = (path, ds)
    return list(seen.values())


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:6])


def _position_key(frame: Frame, tolerance_mm: float) -> int:
    return int(round(float(frame.position @ _normal(frame.orientation)) / max(tolerance_mm, 1e-6)))


def _split_series(frames: list[Frame], tolerance_mm: float) -> list[tuple[str, list[Frame]]]:
    """Split one series into phases: by temporal index when every frame has one, else by time per position."""
    label = series_label(frames[0])
    if all(f.temporal_index is not None for f in frames):
        counts = {f.temporal_count for f in frames if f.temporal_count is not None}
        if len(counts) > 1:
            raise StudyIncomplete(f"{label}: Number of Temporal Positions differs between instances: {sorted(counts)}")
        indices = sorted({int(f.temporal_index) for f in frames})  # type: ignore[arg-type]
        expected = counts.pop() if counts else max(indices)  # enhanced MR: no count, the highest index
        wanted = list(range(1, expected + 1))
        if indices != wanted:
            missing = sorted(set(wanted) - set(indices))
            extra = sorted(set(indices) - set(wanted))
            problem = (f"missing temporal position(s) {', '.join(map(str, missing))}" if missing else
                       f"unexpected temporal position(s) {', '.join(map(str, extra))}")
            raise StudyIncomplete(f"{label}: {problem} of {expected} (Number of Temporal Positions)")
        return [(f"temporal position {i}", [f for f in frames if f.temporal_index == i]) for i in indices]
    by_position: dict[int, list[Frame]] = {}
    for frame in frames:
        by_position.setdefault(_position_key(frame, tolerance_mm), []).append(frame)
    for group in by_position.values():  # exact duplicates at one position are not extra phases
        group[:] = _unique_images(group)
    depths = {len(group) for group in by_position.values()}
    if len(depths) > 1:
        raise StudyIncomplete(
            f"{label}: slice positions hold different numbers of images ({sorted(depths)}); a phase is incomplete"
        )
    depth = depths.pop()
    if depth > 1 and any(f.time_s is None for f in frames):
        raise StudyIncomplete(f"{label}: several images per slice position but no Temporal Position Identifier, "
                              "Trigger Time or Acquisition Time to order them")
    phases: list[list[Frame]] = [[] for _ in range(depth)]
    for group in by_position.values():
        group.sort(key=lambda f: (f.time_s or 0.0, f.instance_number, f.frame_index))
        for i, frame in enumerate(group):
            phases[i].append(frame)
    return [(frames[0].series_description if depth == 1 else f"temporal position {i + 1}", p)
            for i, p in enumerate(phases)]


def _unique_images(group: list[Frame]) -> list[Frame]:
    unique: list[Frame] = []
    for frame in group:
        if not any(_same_image(frame, other) for other in unique):
            unique.append(frame)
    return unique


def _same_image(a: Frame, b: Frame) -> bool:
    return (a.pixels.shape == b.pixels.shape and a.slope == b.slope and a.intercept == b.intercept
            and a.time_s == b.time_s and bool(np.array_equal(a.pixels, b.pixels)))


def _order_series(
    by_series: dict[str, list[Frame]], phase_rules: Sequence[str] | None
) -> list[tuple[str, list[Frame]]]:
    """One phase per series: pick by Series Description rules, or order by earliest acquisition time."""
    if phase_rules:
        chosen: list[tuple[str, list[Frame]]] = []
        for rule in phase_rules:
            hits = [uid for uid, fr in by_series.items() if re.fullmatch(rule, fr[0].series_description, re.IGNORECASE)]
            if not hits:
                present = ", ".join(repr(fr[0].series_description) for fr in by_series.values())
                raise StudyIncomplete(f"no series matches phase rule {rule!r} (series present: {present})")
            if len(hits) > 1:
                raise StudyIncomplete(f"phase rule {rule!r} matches {len(hits)} series: "
                                      + ", ".join(series_label(by_series[u][0]) for u in hits))
            chosen.append((by_series[hits[0]][0].series_description, by_series[hits[0]]))
        return chosen
    untimed = [uid for uid, fr in by_series.items() if all(f.time_s is None for f in fr)]
    if untimed:
        raise StudyIncomplete(f"{series_label(by_series[untimed[0]][0])}: no Acquisition Time to order the "
                              "phase series; set phase rules on Series Description")
    ordered = sorted(by_series.values(), key=lambda fr: min(f.time_s for f in fr if f.time_s is not None))
    return [(fr[0].series_description, fr) for fr in ordered]


def _geometry_key(frames: list[Frame]) -> tuple[object, ...]:
    f = frames[0]
    return (tuple(np.round(f.orientation, 2).tolist()), f.rows, f.columns)


def _describe_geometry(frames: list[Frame]) -> str:
    f = frames[0]
    return f"orientation {np.round(f.orientation, 3).tolist()}, matrix {f.rows}x{f.columns}"


def _check_within_series(frames: list[Frame]) -> None:
    """One series has one Image Orientation (Patient) (C.7.6.2.1.1) and one matrix."""
    ref = frames[0]
    for frame in frames:
        if np.max(np.abs(frame.orientation - ref.orientation)) > ORIENTATION_TOLERANCE:
            raise StudyIncomplete(f"{series_label(frame)}: Image Orientation (Patient) {frame.orientation.tolist()} "
                                  f"differs from {ref.orientation.tolist()} within the series")


def _leave_out_odd_geometry(by_series: dict[str, list[Frame]], notes: list[str]) -> dict[str, list[Frame]]:
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


def _phases(
    frames: list[Frame], tolerance_mm: float, phase_rules: Sequence[str] | None, notes: list[str]
) -> tuple[str, list[tuple[str, list[Frame]]]]:
    by_series: dict[str, list[Frame]] = {}
    for frame in frames:
        by_series.setdefault(frame.series_uid, []).append(frame)
    for series in by_series.values():
        _check_within_series(series)
    if phase_rules:
        return "series_per_phase", _order_series(by_series, phase_rules)
    by_series = _leave_out_odd_geometry(by_series, notes)
    splits = {uid: _split_series(series, tolerance_mm) for uid, series in by_series.items()}
    dynamic = [uid for uid, split in splits.items() if len(split) > 1]
    if len(dynamic) > 1:
        raise StudyIncomplete("several series hold multiple phases: " + ", ".join(
            series_label(by_series[uid][0]) for uid in dynamic) + "; route one dynamic series or set phase rules")
    if dynamic:
        only = by_series[dynamic[0]]
        for uid, series in by_series.items():
            if uid != dynamic[0]:
                notes.append(f"left out {series_label(series[0])}: a single phase beside the dynamic series")
        encoding = "enhanced" if only[0].sop_class_uid == ENHANCED_MR_IMAGE_STORAGE else "single_series"
        return encoding, splits[dynamic[0]]
    if len(by_series) == 1:
        only = next(iter(by_series.values()))
        encoding = "enhanced" if only[0].sop_class_uid == ENHANCED_MR_IMAGE_STORAGE else "single_series"
        return encoding, splits[only[0].series_uid]
    return "series_per_phase", _order_series(by_series, None)


def _stack(label: str, frames: list[Frame], tolerance_mm: float) -> tuple[list[Frame], np.ndarray]:
    """Sort one phase's frames along the slice normal; drop exact duplicates; return frames and positions."""
    orientation = frames[0].orientation
    for frame in frames:
        if np.max(np.abs(frame.orientation - orientation)) > ORIENTATION_TOLERANCE:
            raise StudyIncomplete(f"{series_label(frame)}, phase {label!r}: Image Orientation (Patient) "
                                  f"{frame.orientation.tolist()} differs from {orientation.tolist()} within the phase")
    normal = _normal(orientation)
    ordered = sorted(frames, key=lambda f: float(f.position @ normal))
    unique: list[Frame] = []
    for frame in ordered:
        if unique and abs(float((frame.position - unique[-1].position) @ normal)) <= tolerance_mm:
            if _same_image(frame, unique[-1]):
                continue
            raise StudyIncomplete(
                f"{series_label(frame)}, phase {label!r}: two different images at slice position "
                f"{float(frame.position @ normal):.2f} mm")
        unique.append(frame)
    depths = np.asarray([float(f.position @ normal) for f in unique])
    return unique, depths


def _check_against(label: str, frames: list[Frame], depths: np.ndarray, ref_label: str, ref: list[Frame],
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


def _slice_spacing(label: str, frames: list[Frame], depths: np.ndarray, tolerance_mm: float) -> float:
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


def assemble(
    instances: Iterable[Dataset | tuple[Path | None, Dataset]],
    *,
    phase_count: int | None = None,
    phase_rules: Sequence[str] | None = None,
    tolerance_mm: float = 0.05,
) -> Dce4D:
    """Build the 4-D array from a study's instances, in any order, in any of the three encodings.

    ``phase_count``: the number of phases the model needs (the model card's
    ``phase_count``); ``phase_rules``: one regular expression per phase, matched
    in full against Series Description (case-insensitive), in phase order.
    """
    pairs = [item if isinstance(item, tuple) else (None, item) for item in instances]
    frames = frames_of(_dedupe_instances(pairs))
    if not frames:
        raise StudyIncomplete("no MR Image or Enhanced MR Image instances in the series given")
    notes: list[str] = []
    encoding, phases = _phases(frames, tolerance_mm, phase_rules, notes)
    if phase_count is not None and len(phases) != phase_count:
        names = ", ".join(f"{label!r}" for label, _ in phases)
        series = ", ".join(sorted({series_label(f[0]) for _, f in phases}))
        raise StudyIncomplete(f"{series}: {len(phases)} phase(s) found ({names}) but the model needs {phase_count}"
                              + (" (a phase is missing)" if len(phases) < phase_count else "")
                              + "".join(f"; {note}" for note in notes))
    for note in notes:
        logger.info("assembly: %s", note)
    stacks = [(label, *_stack(label, frs, tolerance_mm)) for label, frs in phases]
    ref_label, ref, ref_depths = stacks[0]
    for label, frs, depths in stacks[1:]:
        _check_against(label, frs, depths, ref_label, ref, ref_depths, tolerance_mm)
    dz = _slice_spacing(ref_label, ref, ref_depths, tolerance_mm)
    array = np.empty((len(stacks), len(ref), ref[0].rows, ref[0].columns), dtype=np.float32)
    for p, (_, frs, _) in enumerate(stacks):
        for z, frame in enumerate(frs):
            array[p, z] = frame.values()
    times = [min((f.time_s for f in frs if f.time_s is not None), default=None) for _, frs, _ in stacks]
    t0 = times[0]
    sources = {(f.series_uid, f.sop_instance_uid): SourceRef(f.series_uid, f.sop_instance_uid, f.sop_class_uid, f.path)
               for _, frs, _ in stacks for f in frs}
    return Dce4D(
        array=array,
        spacing_mm=(dz, ref[0].pixel_spacing[0], ref[0].pixel_spacing[1]),
        orientation=tuple(float(v) for v in ref[0].orientation),
        origin=tuple(float(v) for v in ref[0].position),  # type: ignore[arg-type]
        phase_labels=tuple(label for label, _, _ in stacks),
        phase_times_s=tuple(None if t is None or t0 is None else t - t0 for t in times),
        encoding=encoding,
        series_uids=tuple(dict.fromkeys(f.series_uid for _, frs, _ in stacks for f in frs)),
        sources=tuple(sources.values()),
        notes=tuple(notes),
    )
