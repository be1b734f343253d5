"""Errors of the DICOM node, under the project's root :class:`~engines.errors.ApplianceError`.

``engines.errors`` is a standard-library-only leaf module: importing it does not
make the node depend on the engines (see that module's docstring for the tree).
"""

from __future__ import annotations

from engines.errors import ApplianceError

__all__ = ["DeliveryFailed", "DuplicateInstance", "NodeError", "SenderStopped"]


class NodeError(ApplianceError):
    """Base of the DICOM node's errors."""


class DeliveryFailed(NodeError):
    """A C-STORE to a destination did not succeed; the message says why."""


class SenderStopped(DeliveryFailed):
    """The sender was stopped (shutdown) before this file was sent: retry it later, no attempt is counted."""


class DuplicateInstance(NodeError):
    """A SOP Instance UID already stored under another study or series (PS3.3 C.12.1.1.1: UIDs are unique)."""


class DeliveryRefused(DeliveryFailed):
    """The destination refused the file for a reason that sending it again will not change (e.g. HTTP 409)."""
