"""A tiny sd_notify(3): tell systemd (Type=notify) that the service is ready or stopping.

Sends one datagram to the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a path,
or an abstract name starting with ``@``). Without that variable (not started by
systemd) it does nothing and returns False.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify", "ready", "stopping"]

logger = logging.getLogger(__name__)


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=running"``); True if a notify socket took it."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address[0] not in ("/", "@"):
        logger.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name; not notifying", address)
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError as exc:
        logger.warning("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def ready(status: str = "") -> bool:
    """``READY=1``: startup finished (the unit becomes active)."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping(status: str = "") -> bool:
    """``STOPPING=1``: shutdown has begun."""
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))
