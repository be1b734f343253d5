"""The state machines of the store's rows: one :class:`~enum.StrEnum` each, with its allowed transitions.

Every state literal of the appliance is a member here, and :data:`TRANSITIONS`
is the only place that says which state may follow which. The table classes
write a state change as ``update ... where state in (<sources>)`` with
:func:`sources`, so a row never takes a transition that is not listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

__all__ = [
    "DELIVERY_STATES", "JOB_STATES", "TRANSITIONS", "DeliveryState", "JobState", "SeriesState", "StudyState",
    "allowed", "sources",
]


class SeriesState(StrEnum):
    """A series: ``open`` until routed, then ``routed`` -> ``assembled`` (its job exists), or ``unrouted``/``failed``."""

    OPEN = "open"
    ROUTED = "routed"
    UNROUTED = "unrouted"
    FAILED = "failed"
    ASSEMBLED = "assembled"


class StudyState(StrEnum):
    """A study: ``open`` until a study-level job (breast MRI) exists for it."""

    OPEN = "open"
    ASSEMBLED = "assembled"


class JobState(StrEnum):
    """A job: ``queued`` -> ``running`` (leased) -> ``succeeded``, ``failed``, or back to ``queued``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """A result file for one destination: ``pending`` -> ``delivered`` or ``dead``."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


#: state -> the states it may become, per machine (a state absent as a key is final)
TRANSITIONS: Mapping[type[StrEnum], Mapping[StrEnum, frozenset[StrEnum]]] = {
    SeriesState: {
        SeriesState.OPEN: frozenset({SeriesState.ROUTED, SeriesState.UNROUTED, SeriesState.FAILED}),
        SeriesState.ROUTED: frozenset({SeriesState.ASSEMBLED}),
    },
    StudyState: {StudyState.OPEN: frozenset({StudyState.ASSEMBLED})},
    JobState: {
        JobState.QUEUED: frozenset({JobState.RUNNING}),
        JobState.RUNNING: frozenset({JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED}),
    },
    DeliveryState: {DeliveryState.PENDING: frozenset({DeliveryState.DELIVERED, DeliveryState.DEAD})},
}

JOB_STATES: tuple[JobState, ...] = tuple(JobState)
DELIVERY_STATES: tuple[DeliveryState, ...] = tuple(DeliveryState)


def allowed(source: StrEnum, target: StrEnum) -> bool:
    """Whether a row in ``source`` may move to ``target``."""
    return target in TRANSITIONS[type(source)].get(source, frozenset())


def sources(target: StrEnum) -> tuple[str, ...]:
    """The states a row may be in to move to ``target``, in declaration order."""
    machine = type(target)
    return tuple(str(s) for s in machine if target in TRANSITIONS[machine].get(s, frozenset()))
