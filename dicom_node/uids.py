"""The one UID validator of the appliance (PS3.5 section 9.1).

A UID is one or more components of digits separated by single dots; a
component does not start with ``0`` unless it is ``0`` itself; the whole is at
most 64 characters. These are pydicom's ``UID.is_valid`` rules, and the
pattern is pydicom's own (:data:`pydicom.uid.RE_VALID_UID`); the one difference
is that the check is a :meth:`re.Pattern.fullmatch` on a ``str``, so a trailing
newline (which the pattern's ``$`` and so ``UID("1.2\\n").is_valid`` let
through) is refused. Every part of the appliance that accepts, names a file
after, or writes a UID uses :func:`is_valid_uid` (shared/DESIGN.md invariant
2): the node's C-STORE and spool, the configuration, the report builder.
"""

from __future__ import annotations

from pydicom.uid import RE_VALID_UID

__all__ = ["MAX_UID_LENGTH", "is_valid_uid"]

#: PS3.5 section 9.1: "shall not exceed 64 total characters"
MAX_UID_LENGTH = 64
_UID = RE_VALID_UID  # "^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$", used with fullmatch


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` is a ``str`` that is a valid UID (PS3.5 section 9.1)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None
