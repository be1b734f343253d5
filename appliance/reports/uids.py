"""Deterministic UIDs for the objects the appliance creates (PS3.5 §9.1, Annex B.2).

Every UID is ``2.25.<decimal of a UUID>`` (PS3.5 §B.2), the UUID being a
version-5 (name-based, SHA-1) UUID under the appliance's own namespace. The
same (job id, engine version, object kind) therefore always gives the same SOP
Instance UID and Series Instance UID: re-sending a result after a crash
re-sends the *same* instance, and a PACS de-duplicates it.
"""

from __future__ import annotations

import re
import uuid

from appliance.errors import ReportError
from dicom_node.uids import is_valid_uid

#: The appliance's UUID namespace (a fixed, random UUID; never change it).
APPLIANCE_NAMESPACE = uuid.UUID("6f1c8a52-3d0e-4b7a-9a43-2e5d1c0b7f19")
UID_ROOT = "2.25"

#: Object kinds with their own series (one series per kind and job).
KINDS = ("sr", "seg", "sc")


def uid_from_name(*parts: str) -> str:
    """``2.25.N`` where N is the integer of uuid5(namespace, parts joined by U+001F)."""
    if not parts or any(not isinstance(p, str) for p in parts):
        raise ReportError(f"UID name parts must be one or more strings, got {parts!r}")
    name = "\x1f".join(parts)
    return f"{UID_ROOT}.{uuid.uuid5(APPLIANCE_NAMESPACE, name).int}"


def check_uid(value: str) -> str:
    """Return ``value`` if it is a valid UID (PS3.5 §9.1), else raise :class:`ReportError`."""
    if not is_valid_uid(value):
        raise ReportError(f"{value!r} is not a valid UID: digits and dots, no leading zeros, at most 64 characters")
    return value


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ReportError(f"object kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def sop_instance_uid(job_id: str, engine_version: str, kind: str) -> str:
    """SOP Instance UID of the ``kind`` object of a job's result from one engine version."""
    return uid_from_name("instance", job_id, engine_version, _check_kind(kind))


def series_instance_uid(job_id: str, engine_version: str, kind: str) -> str:
    """Series Instance UID of the new series the ``kind`` object of a job belongs to."""
    return uid_from_name("series", job_id, engine_version, _check_kind(kind))


def tracking_uid(job_id: str, engine_version: str, index: int) -> str:
    """Tracking UID of finding ``index`` of a job (TID 4108 Tracking Identifier)."""
    return uid_from_name("tracking", job_id, engine_version, str(index))


def device_uid(manifest_sha256: str) -> str:
    """Device UID of an engine bundle: derived from its manifest hash, so it changes with every version."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", manifest_sha256 or ""):
        raise ReportError(f"manifest sha256 {manifest_sha256!r} must be 64 hexadecimal digits")
    return uid_from_name("engine-device", manifest_sha256.lower())


def appliance_uid(identity: str) -> str:
    """Device Observer UID of the appliance itself, derived from a stable identity (serial or host)."""
    return uid_from_name("appliance-device", identity)
