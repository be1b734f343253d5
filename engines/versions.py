"""Ordering of engine versions, for the registry's downgrade protection (issue 15, finding 11).

A task's versions only move forward unless the operator forces a downgrade:
an older signed bundle (perhaps one with a known defect) must not replace a
newer one by being installed or activated. Versions are compared by their
release, PEP 440 (``packaging``) when both parse, else naturally (numbers as
numbers); a local label after ``+`` (``1.0.0+fp16``, ``1.0.0+int8``) names a
variant of the same release, never an older one.
"""

from __future__ import annotations

import re

from packaging.version import InvalidVersion, Version

__all__ = ["is_downgrade", "newest"]

_PART = re.compile(r"[0-9]+|[A-Za-z]+")


def _natural(release: str) -> tuple[tuple[int, int, str], ...]:
    return tuple((1, int(p), "") if p.isdigit() else (0, 0, p.lower()) for p in _PART.findall(release))


def _release(version: str) -> str:
    return version.split("+", 1)[0]


def is_downgrade(version: str, than: str) -> bool:
    """True when ``version``'s release is older than ``than``'s."""
    a, b = _release(version), _release(than)
    try:
        return Version(a) < Version(b)
    except InvalidVersion:
        return _natural(a) < _natural(b)


def newest(versions: list[str]) -> str | None:
    """The newest release among ``versions`` (None when empty)."""
    best: str | None = None
    for version in versions:
        if best is None or is_downgrade(best, version):
            best = version
    return best
