"""Errors of the DICOM node."""

from __future__ import annotations


class NodeError(Exception):
    """Base of the DICOM node's errors."""


class DeliveryFailed(NodeError):
    """A C-STORE to a destination did not succeed; the message says why."""
