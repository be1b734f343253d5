"""Errors of the DICOM node."""

from __future__ import annotations


class NodeError(Exception):
    """Base of the DICOM node's errors."""


class DeliveryFailed(NodeError):
    """A C-STORE to a destination did not succeed; the message says why."""


class DuplicateInstance(NodeError):
    """A SOP Instance UID already stored under another study or series (PS3.3 C.12.1.1.1: UIDs are unique)."""


class DeliveryRefused(DeliveryFailed):
    """The destination refused the file for a reason that sending it again will not change (e.g. HTTP 409)."""
