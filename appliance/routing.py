"""Routing: which pipeline, if any, a series goes to (shared/DESIGN.md, "Data flow").

Rules come from ``[[routes]]`` in the configuration, in order; the first rule
whose every ``match`` entry holds wins. A ``match`` entry maps a DICOM keyword
to an exact value, or to ``re:<regex>`` searched (Python :func:`re.search`;
anchor with ``^...$`` for a whole-value match) in the value. Multi-valued
elements are compared as their DICOM string form, values joined by ``\\``
(PS3.5 section 6.4). A keyword absent from the header does not match.

The header is the series' first received instance, as the DICOM node scanned
it while receiving (the ``header`` stored with its row; nothing is parsed or
inflated again); rows stored before the node kept headers are read from the
spool with ``stop_before_pixels``. A series that matches no rule is marked
``unrouted``, kept, and logged by an opaque id. Each series is routed on its
own: one whose header cannot be read (or any other failure while routing it)
is marked ``failed`` with the reason, logged by its opaque id, and the pass
goes on with the others.
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
from dicom_node.header import read_header_blob

__all__ = [
    "first_instance_path", "match_route", "opaque_id", "read_header", "route_open_series", "series_header",
    "value_matches",
]

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
    row = store.instances.first(series_uid)
    return Path(row["path"]) if row else None


def read_header(path: Path) -> Dataset:
    """The instance's header without pixel data; StudyIncomplete when it cannot be read."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError, ValueError, EOFError, RecursionError) as exc:
        raise StudyIncomplete(f"cannot read the header of the first instance: {type(exc).__name__}") from None


def series_header(store: StateStore, series_uid: str) -> Dataset | None:
    """The header of the series' first instance: the node's scanned header, else the file's; None without one."""
    row = store.instances.first(series_uid)
    if row is None:
        return None
    if row["header"]:
        try:
            return read_header_blob(bytes(row["header"]), str(row["header_syntax"]))
        except Exception as exc:  # noqa: BLE001 - a header that does not parse is this series' failure
            raise StudyIncomplete(f"cannot read the scanned header: {type(exc).__name__}") from None
    return read_header(Path(row["path"]))


def _route_one(store: StateStore, routes: Sequence[RouteSettings], series_uid: str) -> tuple[bool, int | None]:
    """(decided, route index) for one open series; raises on a failure of this series."""
    header = series_header(store, series_uid)
    if header is None:
        return False, None  # a series row without instances yet: look again next time
    index = match_route(routes, header)
    store.series.route(series_uid, index)
    if index is None:
        logger.info("series %s matches no route; kept unrouted", opaque_id(series_uid))
    else:
        logger.info("series %s routed to %s (route %d)", opaque_id(series_uid), routes[index].pipeline, index)
    return True, index


def _mark_failed(store: StateStore, series_uid: str, reason: str) -> None:
    logger.warning("series %s failed: %s", opaque_id(series_uid), reason)
    store.series.fail(series_uid, reason)


def route_open_series(store: StateStore, routes: Sequence[RouteSettings]) -> dict[str, int | None]:
    """Route every ``open`` series: set ``route`` and state ``routed``, or state ``unrouted``, or ``failed``.

    Returns series UID -> route index (None for unrouted or failed) for the series decided in this call.
    """
    decided: dict[str, int | None] = {}
    for series_uid in store.series.open_uids():
        try:
            done, index = _route_one(store, routes, series_uid)
        except StudyIncomplete as exc:
            _mark_failed(store, series_uid, str(exc))
            done, index = True, None
        except Exception as exc:  # noqa: BLE001 - one series never stops routing of the others
            _mark_failed(store, series_uid, f"routing failed: {type(exc).__name__}")
            done, index = True, None
        if done:
            decided[series_uid] = index
    return decided
