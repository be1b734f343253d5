"""The one switch of the pynetdicom speed-ups (see :mod:`dicom_node.speedups`)."""

from __future__ import annotations

import os

import pynetdicom

__all__ = ["ENV_VAR", "SUPPORTED", "enabled", "set_enabled"]

#: ``DICOM_NODE_PYNETDICOM_SPEEDUPS=0`` (or ``off``, ``false``, ``no``) starts the process with them off
ENV_VAR = "DICOM_NODE_PYNETDICOM_SPEEDUPS"
#: the speed-ups mirror pynetdicom 3.0's reactors; another series always gets pynetdicom's own paths
SUPPORTED = pynetdicom.__version__.startswith("3.0.")

_enabled = SUPPORTED and os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "off", "false", "no")


def enabled() -> bool:
    """True when new associations (SCP side) and new store sessions (SCU side) use the speed-ups."""
    return _enabled


def set_enabled(on: bool) -> None:
    """Turn the speed-ups on or off for associations and sessions made from now on (never on another series)."""
    global _enabled
    _enabled = bool(on) and SUPPORTED
