"""The one UID validator of the appliance (PS3.5 section 9.1).

A UID is one or more components of digits separated by single dots; a
component does not start with ``0`` unless it is ``0`` itself; the whole is at
most 64 characters. The check is a :meth:`re.Pattern.fullmatch` on a ``str``,
so a trailing newline (which ``$`` would let through) is refused. Every part of
the appliance that accepts, names a file after, or writes a UID uses
:func:`is_valid_uid` (shared/DESIGN.md invariant 2).
"""

from __future__ import annotations

import re

__all__ = ["MAX_UID_LENGTH", "is_valid_uid"]

#: PS3.5 section 9.1: "shall not exceed 64 total characters"
MAX_UID_LENGTH = 64
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` is a ``str`` that is a valid UID (PS3.5 section 9.1)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None
