"""Errors of the engines package."""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engines package's errors."""


class BundleRejected(EngineError):
    """A bundle failed verification; the message names what failed."""


class RuntimeMissing(EngineError):
    """The runtime a bundle requires is not installed on this machine."""
