"""Readers of one model-card value: each checks its JSON value and names the key when it is wrong.

Used by :mod:`engines.cards`; each returns the value as the card's dataclass
field holds it (tuples for lists, floats for numbers) or raises
:class:`~engines.errors.BundleRejected` with ``model_card.KEY VALUE`` and what
would be valid.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from engines.errors import BundleRejected

__all__ = ["count", "fail", "flag", "is_number", "listof", "number", "numbers", "pattern", "text", "texts", "times"]


def fail(message: str) -> BundleRejected:
    return BundleRejected(message)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value: Any, key: str, low: float | None = None, high: float | None = None,
           above: float | None = None) -> float:
    ok = is_number(value) and (low is None or value >= low) and (high is None or value <= high) \
        and (above is None or value > above)
    if not ok:
        bounds = " and ".join(b for b in (f">= {low:g}" if low is not None else "", f"<= {high:g}" if high is not None
                                          else "", f"> {above:g}" if above is not None else "") if b)
        raise fail(f"model_card.{key} {value!r} must be a number{' ' + bounds if bounds else ''}")
    return float(value)


def count(value: Any, key: str, low: int = 1) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise fail(f"model_card.{key} {value!r} must be a whole number >= {low}")
    return value


def text(value: Any, key: str, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str) or (choices and value not in choices):
        raise fail(f"model_card.{key} {value!r} is not one of {', '.join(choices)}" if choices
                   else f"model_card.{key} {value!r} must be a string")
    return value


def flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise fail(f"model_card.{key} {value!r} must be true or false")
    return value


def pattern(value: Any, key: str) -> str:
    try:
        re.compile(text(value, key))
    except re.error as exc:
        raise fail(f"model_card.{key} {value!r} is not a regular expression: {exc}") from None
    return str(value)


def numbers(value: Any, key: str, length: int, positive: bool) -> tuple[float, ...]:
    if not (isinstance(value, list) and len(value) == length and all(is_number(v) for v in value)
            and (not positive or all(v > 0 for v in value))):
        raise fail(f"model_card.{key} {value!r} must be a list of {length} {'positive ' if positive else ''}numbers")
    return tuple(float(v) for v in value)


def texts(value: Any, key: str, each: Callable[[Any, str], str] = text) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise fail(f"model_card.{key} {value!r} must be a list of strings")
    return tuple(each(v, f"{key}[{i}]") for i, v in enumerate(value))


def listof(value: Any, key: str, length: int) -> list[Any]:
    if not (isinstance(value, list) and len(value) == length):
        raise fail(f"model_card.{key} {value!r} must be a list of {length} values")
    return value


def times(value: Any, key: str) -> tuple[float, ...]:
    if not (isinstance(value, list) and value and all(is_number(t) and t >= 0 for t in value)
            and all(b > a for a, b in zip(value, value[1:]))):
        raise fail(f"model_card.{key} {value!r} must be a non-empty list of increasing seconds >= 0")
    return tuple(float(t) for t in value)
