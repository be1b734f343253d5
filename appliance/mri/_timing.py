"""Map a study's dynamic phases onto the phases a model was trained on, by time after contrast injection.

A model card states its phases as a pre-contrast phase and post-contrast
phases at nominal seconds after injection (``post_contrast_times_s``, with
``phase_tolerance_s``). A study brings its own protocol: any number of phases
at its own times. This module

1. finds the pre-contrast phase: the last phase before the first one with a
   Contrast/Bolus Agent (PS3.3 C.7.6.4) when the study says which phases had
   contrast, else the earliest phase;
2. gives every post-contrast phase a time from one source shared by all of
   them, in this order: Acquisition Date/Time, Trigger Time, Temporal Position
   Identifier x Temporal Resolution (C.8.3.1);
3. expresses those times after injection: relative to Contrast/Bolus Start
   Time when the study has it and the times are times of day, else relative to
   the first post-contrast phase, which is then taken to be the model's first
   post-contrast time;
4. builds each model phase from the study's phase nearest in time (within the
   tolerance), else by linear interpolation in time between the two phases
   around it (at most ``max_interpolation_gap_s`` apart); a model time outside
   the study's post-contrast window is refused with the times found and needed.

Only timing lives here; :func:`apply_plan` mixes the arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from appliance.errors import StudyIncomplete
from engines.cards import DEFAULT_PHASE_TOLERANCE_S, BreastMriCard

if TYPE_CHECKING:
    from appliance.mri._assembly import Dce4D

__all__ = ["MappedPhase", "PhaseInfo", "PhasePlan", "PhaseSchedule", "apply_plan", "map_to_model", "plan_phases"]

DEFAULT_TOLERANCE_S = DEFAULT_PHASE_TOLERANCE_S
TIME_SOURCES = ("acquisition", "trigger", "temporal position")
MAX_AFTER_INJECTION_S = 3 * 3600.0  #: a Contrast/Bolus Start Time further back belongs to another day or injection


@dataclass(frozen=True)
class PhaseInfo:
    """One phase the study holds: its name and what its header says about time and contrast."""

    label: str  #: Series Description or "temporal position N"
    series_uid: str
    acquisition_s: float | None  #: earliest Acquisition Date/Time of its images, seconds
    trigger_s: float | None  #: earliest Trigger Time, seconds
    temporal_s: float | None  #: (Temporal Position Identifier - 1) x Temporal Resolution, seconds
    contrast: bool | None  #: Contrast/Bolus Agent given; None when the header does not say
    contrast_start_s: float | None  #: Contrast/Bolus Start Time on the acquisition's day, seconds

    def time(self, source: str) -> float | None:
        return {"acquisition": self.acquisition_s, "trigger": self.trigger_s,
                "temporal position": self.temporal_s}[source]


@dataclass(frozen=True)
class PhaseSchedule:
    """What the model card says about phases: a pre-contrast phase, then post-contrast times after injection."""

    post_times_s: tuple[float, ...]
    tolerance_s: float = DEFAULT_TOLERANCE_S
    max_gap_s: float = 0.0  #: longest interpolation interval; 0: twice the card's longest post-contrast step

    @property
    def phase_count(self) -> int:
        return 1 + len(self.post_times_s)

    @property
    def longest_gap_s(self) -> float:
        if self.max_gap_s > 0:
            return self.max_gap_s
        steps = np.diff((0.0, *self.post_times_s))
        return 2.0 * float(max(steps.max(), self.tolerance_s))

    @classmethod
    def from_card(cls, card: BreastMriCard) -> PhaseSchedule | None:
        """The card's schedule, or None for an old card that gives only ``phase_count`` (matched by count)."""
        if card.post_contrast_times_s is None:
            return None
        return cls(card.post_contrast_times_s, card.phase_tolerance_s, card.max_interpolation_gap_s)


@dataclass(frozen=True)
class MappedPhase:
    """One model phase: the study phases (index, weight) it is made of, and when it lies."""

    model_time_s: float | None  #: None for the pre-contrast phase
    parts: tuple[tuple[int, float], ...]  #: (study phase index, weight); weights sum to 1

    def describe(self, phases: Sequence[PhaseInfo], times: Mapping[int, float]) -> str:
        target = "pre-contrast" if self.model_time_s is None else f"{self.model_time_s:g} s"
        used = " + ".join(
            (f"{w:.2f} x " if len(self.parts) > 1 else "") + f"{phases[i].label!r}"
            + (f" ({times[i]:.0f} s)" if i in times else "")
            for i, w in self.parts
        )
        return f"{target} <- {used}"


@dataclass(frozen=True)
class PhasePlan:
    """How the model's phases are built from the study's."""

    phases: tuple[MappedPhase, ...]
    post_times_s: Mapping[int, float]  #: study phase index -> its time after injection, seconds
    source: str  #: which header attribute timed the phases
    reference: str  #: "Contrast/Bolus Start Time" or "first post-contrast phase"
    notes: tuple[str, ...] = ()

    def used(self) -> list[int]:
        """Study phase indices that went into the model, in order."""
        return sorted({i for m in self.phases for i, _ in m.parts})

    def describe(self, infos: Sequence[PhaseInfo]) -> list[str]:
        return [m.describe(infos, self.post_times_s) for m in self.phases]


def _pre_index(phases: Sequence[PhaseInfo]) -> tuple[int, list[str]]:
    """The pre-contrast phase: the last one before the first with contrast, else the earliest."""
    flags = [p.contrast for p in phases]
    notes: list[str] = []
    if any(flags) and not all(flags):
        first_post = flags.index(True)
        if first_post == 0:
            raise StudyIncomplete(f"no pre-contrast phase: the earliest phase {phases[0].label!r} already has a "
                                  "Contrast/Bolus Agent")
        if first_post > 1:
            notes.append("pre-contrast phase: " + repr(phases[first_post - 1].label) + f" (the last of {first_post} "
                         "phases without contrast agent)")
        return first_post - 1, notes
    if all(flags):
        notes.append("every phase names a Contrast/Bolus Agent; the earliest is taken as pre-contrast")
    return 0, notes


def _times(phases: Sequence[PhaseInfo], post: list[int]) -> tuple[str, list[float]]:
    for source in TIME_SOURCES:
        values = [phases[i].time(source) for i in post]
        if all(v is not None for v in values):
            return source, [float(v) for v in values]  # type: ignore[arg-type]
    untimed = next(phases[i].label for i in post if all(phases[i].time(s) is None for s in TIME_SOURCES))
    raise StudyIncomplete(f"phase {untimed!r} has no Acquisition Date/Time, Trigger Time or Temporal Position with "
                          "Temporal Resolution: its time after injection is unknown")


def _after_injection(phases: Sequence[PhaseInfo], post: list[int], source: str, times: list[float],
                     schedule: PhaseSchedule) -> tuple[list[float], str]:
    starts = [s for s in (phases[i].contrast_start_s for i in post) if s is not None]
    if source == "acquisition" and starts:
        injection = min(starts)
        relative = [t - injection for t in times]
        if 0 <= min(relative) and max(relative) < MAX_AFTER_INJECTION_S:
            return relative, "Contrast/Bolus Start Time"
    first = times[0]
    return [t - first + schedule.post_times_s[0] for t in times], "first post-contrast phase"


def _seconds(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values) + " s"


def _map_one(target: float, times: list[float], indices: list[int], schedule: PhaseSchedule,
             labels: Sequence[str]) -> MappedPhase:
    distances = [abs(t - target) for t in times]
    nearest = int(np.argmin(distances))
    if distances[nearest] <= schedule.tolerance_s:
        return MappedPhase(target, ((indices[nearest], 1.0),))
    before = [k for k, t in enumerate(times) if t < target]
    after = [k for k, t in enumerate(times) if t > target]
    needed = f"the model needs post-contrast phases at {_seconds(schedule.post_times_s)} after injection"
    found = f"the study has them at {_seconds(times)} ({', '.join(repr(x) for x in labels)})"
    if not before or not after:
        side = "no phase at or after" if not after else "no phase at or before"
        raise StudyIncomplete(f"the study does not cover the model's time window: {side} {target:.0f} s "
                              f"(tolerance {schedule.tolerance_s:g} s); {found}; {needed}")
    a, b = before[-1], after[0]
    gap = times[b] - times[a]
    if gap > schedule.longest_gap_s:
        raise StudyIncomplete(f"no phase near {target:.0f} s: the nearest lie {gap:.0f} s apart ({times[a]:.0f} and "
                              f"{times[b]:.0f} s), more than the {schedule.longest_gap_s:g} s the model allows to "
                              f"interpolate over; {found}; {needed}")
    w = (target - times[a]) / gap
    return MappedPhase(target, ((indices[a], 1.0 - w), (indices[b], w)))


def plan_phases(phases: Sequence[PhaseInfo], schedule: PhaseSchedule) -> PhasePlan:
    """Which of the study's phases (in time order) make each of the model's phases; refuse with a reason."""
    if len(phases) < 2:
        raise StudyIncomplete(f"{len(phases)} phase found ({', '.join(repr(p.label) for p in phases)}); the model "
                              f"needs a pre-contrast phase and post-contrast phases at {_seconds(schedule.post_times_s)}"
                              " after injection")
    pre, notes = _pre_index(phases)
    post = list(range(pre + 1, len(phases)))
    skipped = [phases[i].label for i in range(pre)]
    if skipped:
        notes.append(f"left out earlier pre-contrast phase(s): {', '.join(map(repr, skipped))}")
    later_plain = [i for i in post if phases[i].contrast is False and any(p.contrast for p in phases)]
    if later_plain:
        notes.append("left out phase(s) without contrast agent after the injection: "
                     + ", ".join(repr(phases[i].label) for i in later_plain))
        post = [i for i in post if i not in later_plain]
    source, raw = _times(phases, post)
    relative, reference = _after_injection(phases, post, source, raw, schedule)
    labels = [phases[i].label for i in post]
    mapped = [MappedPhase(None, ((pre, 1.0),))]
    mapped += [_map_one(t, relative, post, schedule, labels) for t in schedule.post_times_s]
    return PhasePlan(tuple(mapped), dict(zip(post, relative)), source, reference, tuple(notes))


def apply_plan(array: np.ndarray, plan: PhasePlan) -> np.ndarray:
    """The model's phases (phase, z, y, x) from the study's ``array``, float32; interpolation is linear in time."""
    out = np.empty((len(plan.phases), *array.shape[1:]), dtype=np.float32)
    for k, mapped in enumerate(plan.phases):
        acc = np.zeros(array.shape[1:], dtype=np.float64)
        for index, weight in mapped.parts:
            acc += weight * array[index]
        out[k] = acc
    return out


def map_to_model(study: Dce4D, schedule: PhaseSchedule) -> tuple[Dce4D, PhasePlan]:
    """The study with the model's phases (mapped by time), only the instances used, and the mapping as notes."""
    plan = plan_phases(study.phases, schedule)
    used = plan.used()
    lines = plan.describe(study.phases)
    notes = (*study.notes, *plan.notes,
             f"phases timed by {plan.source} time after injection, relative to the {plan.reference}: "
             + "; ".join(lines))
    mapped = dataclasses.replace(
        study,
        array=apply_plan(study.array, plan),
        phase_labels=tuple(lines),
        phase_times_s=(None, *schedule.post_times_s),
        sources=tuple(dict.fromkeys(ref for i in used for ref in study.phase_sources[i])),
        series_uids=tuple(dict.fromkeys(study.phases[i].series_uid for i in used)),
        notes=notes,
    )
    return mapped, plan
