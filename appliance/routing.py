"""Routing: which pipeline, if any, a series goes to (shared/DESIGN.md, "Data flow").

Rules come from ``[[routes]]`` in the configuration, in order; the first rule
whose every ``match`` entry holds wins. A ``match`` entry maps a DICOM keyword
to an exact value, or to ``re:<regex>`` searched (Python :func:`re.search`;
anchor with ``^...$`` for a whole-value match) in the value. Multi-valued
elements are compared as their DICOM string form, values joined by ``\\``
(PS3.5 section 6.4). A keyword absent from the header does not match.

The header is the series' first received instance, read from the spool with
``stop_before_pixels``. A series that matches no rule is marked ``unrouted``,
kept, and logged by an opaque id.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from appliance.config import RouteSettings
from appliance.errors import StudyIncomplete
from appliance.state import StateStore

__all__ = ["first_instance_path", "match_route", "opaque_id", "read_header", "route_open_series", "value_matches"]

logger = logging.getLogger(__name__)


def opaque_id(uid: str, prefix: str = "S") -> str:
    """A short id for logs that names a series or study without revealing its UID."""
    return prefix + hashlib.sha256(uid.encode()).hexdigest()[:12]


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _as_text(value: Any) -> str:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(_as_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").rstrip("\x00 ")
    return str(value).strip()


def value_matches(pattern: str, value: Any) -> bool:
    """Whether ``value`` matches ``pattern``: exact text, or ``re:<regex>`` searched in the text."""
    text = _as_text(value)
    if pattern.startswith("re:"):
        return _compiled(pattern[3:]).search(text) is not None
    return text == pattern


def match_route(routes: Sequence[RouteSettings], header: Dataset | Mapping[str, Any]) -> int | None:
    """Index of the first route whose every ``match`` entry holds for ``header``; None if none does.

    A route with an empty ``match`` matches everything.
    """
    for index, route in enumerate(routes):
        ok = True
        for keyword, pattern in route.match.items():
            value = header.get(keyword) if isinstance(header, Mapping) else getattr(header, keyword, None)
            if value is None or not value_matches(pattern, value):
                ok = False
                break
        if ok:
            return index
    return None


def first_instance_path(store: StateStore, series_uid: str) -> Path | None:
    """The spooled file of the first instance received in the series."""
    rows = store.query(
        "select path from instances where series_uid = ? order by received_at, rowid limit 1", (series_uid,)
    )
    return Path(rows[0]["path"]) if rows else None


def read_header(path: Path) -> Dataset:
    """The instance's header without pixel data; StudyIncomplete when it cannot be read."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        raise StudyIncomplete(f"cannot read the header of {path.name}: {type(exc).__name__}") from None


def route_open_series(store: StateStore, routes: Sequence[RouteSettings]) -> dict[str, int | None]:
    """Route every ``open`` series: set ``route`` and state ``routed``, or state ``unrouted``.

    Returns series UID -> route index (None for unrouted) for the series routed in this call.
    """
    decided: dict[str, int | None] = {}
    for row in store.query("select series_uid from series where coalesce(state, 'open') = 'open'"):
        series_uid = row["series_uid"]
        path = first_instance_path(store, series_uid)
        if path is None:
            continue  # a series row without instances yet: look again next time
        try:
            index = match_route(routes, read_header(path))
        except StudyIncomplete as exc:
            logger.warning("series %s unrouted: %s", opaque_id(series_uid), exc)
            index = None
        with store.atomic() as db:
            if index is None:
                db.conn.execute(
                    "update series set state = 'unrouted', route = null where series_uid = ? and"
                    " coalesce(state, 'open') = 'open'",
                    (series_uid,),
                )
            else:
                db.conn.execute(
                    "update series set state = 'routed', route = ? where series_uid = ? and"
                    " coalesce(state, 'open') = 'open'",
                    (index, series_uid),
                )
        if index is None:
            logger.info("series %s matches no route; kept unrouted", opaque_id(series_uid))
        else:
            logger.info("series %s routed to %s (route %d)", opaque_id(series_uid), routes[index].pipeline, index)
        decided[series_uid] = index
    return decided
