"""Assemble a DCE-MRI study into one 4-D array (phase, z, y, x), whatever the encoding.

The encodings scanners and converters write (``export/synthetic/dce_dicom.py``
writes examples):

1. one classic MR series holding every phase, told apart by Temporal Position
   Identifier (0020,0100) and Number of Temporal Positions (0020,0105)
   (PS3.3 C.8.3.1, MR Image Module); without them, the images at one
   slice position are ordered by Trigger Time, then Acquisition Date/Time;
2. one classic series per phase: with a per-series Temporal Position
   Identifier (Number of Temporal Positions describing the whole dynamic, as
   GE and Siemens write it) ordered by it across the series; without it,
   ordered by acquisition time; or picked and ordered by Series Description
   rules (regular expressions, one per phase);
3. a dynamic split into several series of a few phases each (a pre-contrast
   series, then a series of post-contrast phases): the phases of every series
   are pooled and ordered by time;
4. Enhanced MR multi-frame (A.36.2) or Legacy Converted Enhanced MR (A.71.3)
   with Temporal Position Index in each frame's Frame Content Sequence
   (C.7.6.16.2.2), or the converted Temporal Position Identifier.

Subtraction and other derived series in the same job (Image Type DERIVED or
SUBTRACTION, or a Series Description matching :data:`DERIVED_DESCRIPTIONS`)
are left out with a note, as are series of another orientation or matrix.

Slices are sorted by their position along the slice normal (the cross product
of the Image Orientation (Patient) row and column cosines, C.7.6.2.1.1);
orientation, pixel spacing, matrix and slice positions must agree across
phases within a tolerance; Rescale Slope/Intercept (or the Pixel Value
Transformation functional group) is applied. Exact duplicates (same SOP
Instance, or the same image again at one position) are ignored; anything else
inconsistent raises :class:`StudyIncomplete` naming the series and the problem
(the geometry: :mod:`appliance.mri._stacking`).
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
from appliance.mri._frames import (
    ENHANCED_MR_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE,
    Frame,
    frames_of,
    series_label,
)
from appliance.mri._series import DERIVED_DESCRIPTIONS, leave_out_derived, leave_out_odd_geometry
from appliance.mri._stacking import ORIENTATION_TOLERANCE, check_against, same_image, slice_normal, slice_spacing, stack
from appliance.mri._timing import PhaseInfo

logger = logging.getLogger(__name__)

SAME_TIME_S = 0.5  #: two phases of different series this close in time are the same acquisition
_ENCODING = {ENHANCED_MR_IMAGE_STORAGE: "enhanced", LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE: "legacy_enhanced"}


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
    encoding: str  #: single_series | series_per_phase | split_series | enhanced | legacy_enhanced
    series_uids: tuple[str, ...]
    sources: tuple[SourceRef, ...]
    notes: tuple[str, ...] = ()  #: series left out, and why
    phases: tuple[PhaseInfo, ...] = ()  #: each phase's timing and contrast, for phase mapping
    phase_sources: tuple[tuple[SourceRef, ...], ...] = ()  #: the instances of each phase


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


def _position_key(frame: Frame, tolerance_mm: float) -> int:
    return int(round(float(frame.position @ slice_normal(frame.orientation)) / max(tolerance_mm, 1e-6)))


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
        if not any(same_image(frame, other) for other in unique):
            unique.append(frame)
    return unique


def _order_series(by_series: dict[str, list[Frame]], phase_rules: Sequence[str]) -> list[tuple[str, list[Frame]]]:
    """One phase per series, picked and ordered by Series Description rules."""
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


def _check_within_series(frames: list[Frame]) -> None:
    """One series has one Image Orientation (Patient) (C.7.6.2.1.1) and one matrix."""
    ref = frames[0]
    for frame in frames:
        if np.max(np.abs(frame.orientation - ref.orientation)) > ORIENTATION_TOLERANCE:
            raise StudyIncomplete(f"{series_label(frame)}: Image Orientation (Patient) {frame.orientation.tolist()} "
                                  f"differs from {ref.orientation.tolist()} within the series")


def _temporal_series(by_series: dict[str, list[Frame]]) -> bool:
    """Several series, every image with a Temporal Position Identifier, no position in two series."""
    if len(by_series) < 2 or not all(f.temporal_index is not None for s in by_series.values() for f in s):
        return False
    seen: set[int] = set()
    for frames in by_series.values():
        positions = {int(f.temporal_index) for f in frames}  # type: ignore[arg-type]
        if positions & seen:
            return False
        seen |= positions
    return True


def _phase_time(frames: list[Frame], absolute: bool) -> float | None:
    values = [f.acquisition_s if absolute else f.time_s for f in frames]
    return min((v for v in values if v is not None), default=None)


def _in_series(frame: Frame, label: str) -> str:
    number = f"series {frame.series_number}" if frame.series_number is not None else frame.series_description
    return f"{number}, {label}"


def _pool_by_time(by_series: dict[str, list[Frame]], splits: dict[str, list[tuple[str, list[Frame]]]]
                  ) -> list[tuple[str, list[Frame]]]:
    """Every series' phases in one list ordered by acquisition time; the same time twice is an error."""
    phases = [(label, frs) for split in splits.values() for label, frs in split]
    untimed = [frs for _, frs in phases if _phase_time(frs, False) is None]
    if untimed:
        raise StudyIncomplete(f"{series_label(untimed[0][0])}: no Acquisition Time to order the "
                              "phase series; set phase rules on Series Description")
    absolute = all(_phase_time(frs, True) is not None for _, frs in phases)
    phases.sort(key=lambda p: _phase_time(p[1], absolute))  # type: ignore[arg-type, return-value]
    for (la, fa), (lb, fb) in zip(phases, phases[1:]):
        ta, tb = _phase_time(fa, absolute), _phase_time(fb, absolute)
        if fa[0].series_uid != fb[0].series_uid and abs(tb - ta) < SAME_TIME_S:  # type: ignore[operator]
            raise StudyIncomplete(f"phase {la!r} of {series_label(fa[0])} and phase {lb!r} of {series_label(fb[0])} "
                                  "were acquired at the same time: two dynamic series in one job; route one dynamic "
                                  "series or set phase rules")
    if any(len(split) > 1 for split in splits.values()):  # "temporal position 1" of two series: name the series
        phases = [(_in_series(frs[0], label) if len(splits[frs[0].series_uid]) > 1
                   else frs[0].series_description or label, frs) for label, frs in phases]
    return phases


def _phases(
    frames: list[Frame], tolerance_mm: float, phase_rules: Sequence[str] | None, notes: list[str],
    derived_descriptions: str,
) -> tuple[str, list[tuple[str, list[Frame]]]]:
    by_series: dict[str, list[Frame]] = {}
    for frame in frames:
        by_series.setdefault(frame.series_uid, []).append(frame)
    for series in by_series.values():
        _check_within_series(series)
    if phase_rules:
        return "series_per_phase", _order_series(by_series, phase_rules)
    by_series = leave_out_derived(by_series, notes, derived_descriptions)
    by_series = leave_out_odd_geometry(by_series, notes)
    if _temporal_series(by_series):  # one dynamic written as several series, numbered across them
        pooled = [f for series in by_series.values() for f in series]
        encoding = "series_per_phase" if all(len({f.temporal_index for f in s}) == 1 for s in by_series.values()) \
            else "split_series"
        return encoding, _split_series(pooled, tolerance_mm)
    splits = {uid: _split_series(series, tolerance_mm) for uid, series in by_series.items()}
    if len(by_series) == 1:
        only = next(iter(by_series.values()))
        return _ENCODING.get(only[0].sop_class_uid, "single_series"), splits[only[0].series_uid]
    encoding = "series_per_phase" if all(len(split) == 1 for split in splits.values()) else "split_series"
    return encoding, _pool_by_time(by_series, splits)


def _phase_info(label: str, frames: list[Frame]) -> PhaseInfo:
    """What one phase's images say about its time and contrast (earliest time of its images)."""
    def earliest(values: Iterable[float | None]) -> float | None:
        return min((v for v in values if v is not None), default=None)

    resolution = earliest(f.temporal_resolution_s for f in frames)
    index = earliest(float(f.temporal_index) for f in frames if f.temporal_index is not None)
    flags = [f.contrast for f in frames if f.contrast is not None]
    return PhaseInfo(
        label=label, series_uid=frames[0].series_uid,
        acquisition_s=earliest(f.acquisition_s for f in frames),
        trigger_s=earliest(f.trigger_s for f in frames),
        temporal_s=None if resolution is None or index is None else (index - 1) * resolution,
        contrast=any(flags) if flags else None,
        contrast_start_s=earliest(f.contrast_start_s for f in frames),
    )


def assemble(
    instances: Iterable[Dataset | tuple[Path | None, Dataset]],
    *,
    phase_count: int | None = None,
    phase_rules: Sequence[str] | None = None,
    tolerance_mm: float = 0.05,
    philips_scale: bool = False,
    derived_descriptions: str = DERIVED_DESCRIPTIONS,
) -> Dce4D:
    """Build the 4-D array from a study's instances, in any order, in any of the encodings.

    ``phase_count``: the number of phases the model needs, for a model card that
    gives no phase times (else leave it None and map the phases by time,
    :mod:`appliance.mri._timing`); ``phase_rules``: one regular expression per
    phase, matched in full against Series Description (case-insensitive), in
    phase order; ``philips_scale``: apply Philips' private Scale Slope;
    ``derived_descriptions``: Series Descriptions to leave out ("" for none).
    """
    pairs = [item if isinstance(item, tuple) else (None, item) for item in instances]
    frames = frames_of(_dedupe_instances(pairs), philips_scale=philips_scale)
    if not frames:
        raise StudyIncomplete("no MR Image or Enhanced MR Image instances in the series given")
    notes: list[str] = []
    encoding, phases = _phases(frames, tolerance_mm, phase_rules, notes, derived_descriptions)
    _check_phase_count(phases, phase_count, notes)
    if notes:  # the notes name series by UID: they go to the report, the log gets their number
        logger.info("assembly: %d note(s) on series or phases left out", len(notes))
    stacks = [(label, *stack(label, frs, tolerance_mm)) for label, frs in phases]
    ref_label, ref, ref_depths = stacks[0]
    for label, frs, depths in stacks[1:]:
        check_against(label, frs, depths, ref_label, ref, ref_depths, tolerance_mm)
    dz = slice_spacing(ref_label, ref, ref_depths, tolerance_mm)
    return _dce4d([(label, frs) for label, frs, _ in stacks], dz, encoding, notes)


def _check_phase_count(phases: list[tuple[str, list[Frame]]], phase_count: int | None, notes: list[str]) -> None:
    """The phases found are as many as the model needs (when it says), else StudyIncomplete naming them."""
    if phase_count is not None and len(phases) != phase_count:
        names = ", ".join(f"{label!r}" for label, _ in phases)
        series = ", ".join(sorted({series_label(f[0]) for _, f in phases}))
        raise StudyIncomplete(f"{series}: {len(phases)} phase(s) found ({names}) but the model needs {phase_count}"
                              + (" (a phase is missing)" if len(phases) < phase_count else "")
                              + "".join(f"; {note}" for note in notes))


def _dce4d(stacks: list[tuple[str, list[Frame]]], dz: float, encoding: str, notes: list[str]) -> Dce4D:
    """The 4-D array of the stacked, checked phases with its geometry, timing and sources."""
    ref = stacks[0][1]
    array = np.empty((len(stacks), len(ref), ref[0].rows, ref[0].columns), dtype=np.float32)
    for p, (_, frs) in enumerate(stacks):
        for z, frame in enumerate(frs):
            array[p, z] = frame.values()
    times = [min((f.time_s for f in frs if f.time_s is not None), default=None) for _, frs in stacks]
    t0 = times[0]
    per_phase = tuple(
        tuple(dict.fromkeys(SourceRef(f.series_uid, f.sop_instance_uid, f.sop_class_uid, f.path) for f in frs))
        for _, frs in stacks
    )
    return Dce4D(
        array=array,
        spacing_mm=(dz, ref[0].pixel_spacing[0], ref[0].pixel_spacing[1]),
        orientation=tuple(float(v) for v in ref[0].orientation),
        origin=tuple(float(v) for v in ref[0].position),  # type: ignore[arg-type]
        phase_labels=tuple(label for label, _ in stacks),
        phase_times_s=tuple(None if t is None or t0 is None else t - t0 for t in times),
        encoding=encoding,
        series_uids=tuple(dict.fromkeys(f.series_uid for _, frs in stacks for f in frs)),
        sources=tuple(dict.fromkeys(source for phase in per_phase for source in phase)),
        notes=tuple(notes),
        phases=tuple(_phase_info(label, frs) for label, frs in stacks),
        phase_sources=per_phase,
    )
