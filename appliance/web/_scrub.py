"""Failure reasons as the dashboard shows them: no UID, no person name (invariant 4, issue 15 finding 11).

A reason is written by whatever failed (a pipeline, pydicom, a peer's error
comment) and may quote a SOP Instance UID or a data-set value. Pages show it
through :func:`scrub`, which replaces

- dotted numeric tokens that look like a UID (at least four components, or
  three with more than ten characters: ``2.25.<uuid>`` and every registered
  root), also when quoted, with ``<UID>``; short versions such as ``1.0.0`` and
  engine versions and IPv4 addresses stay readable;
- DICOM person names (``Family^Given``) with ``<name>``;

and keeps the rest, so a reason stays useful to the operator.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["REASON_FIELDS", "scrub", "scrub_rows"]

_DOTTED = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+){2,}(?![\w])")
_PERSON_NAME = re.compile(r"[^\s'\"=,;:()\[\]{}]*\^[^\s'\"=,;:()\[\]{}]*")
#: Row fields that may carry free text from a failure.
REASON_FIELDS = ("reason", "last_error", "error")


def _ipv4(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 4 and all(len(p) <= 3 and int(p) <= 255 for p in parts)


def _uid_like(match: re.Match[str]) -> str:
    token = match.group(0).rstrip(".")
    if (token.count(".") >= 3 or len(token) > 10) and not _ipv4(token):
        return "<UID>" + match.group(0)[len(token):]
    return match.group(0)


def scrub(text: object) -> str:
    """``text`` with UIDs and person names replaced by placeholders ('' for None)."""
    if text is None:
        return ""
    return _PERSON_NAME.sub("<name>", _DOTTED.sub(_uid_like, str(text)))


def scrub_rows(rows: Iterable[Any]) -> list[Any]:
    """Rows (dicts or dataclasses such as ``appliance.jobs.Job``) with their free-text fields scrubbed."""
    out = []
    for row in rows:
        if isinstance(row, dict):
            row = {k: scrub(v) if k in REASON_FIELDS and v else v for k, v in row.items()}
        elif dataclasses.is_dataclass(row) and not isinstance(row, type):
            names = {f.name for f in dataclasses.fields(row)}
            changes = {k: scrub(getattr(row, k)) for k in REASON_FIELDS if k in names and getattr(row, k)}
            row = dataclasses.replace(row, **changes) if changes else row
        out.append(row)
    return out
