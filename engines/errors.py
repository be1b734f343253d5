"""Errors of the engines package."""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engines package's errors."""


class BundleRejected(EngineError):
    """A bundle failed verification; the message names what failed."""


class RuntimeMissing(EngineError):
    """The runtime a bundle requires is not installed on this machine."""


class EngineUnavailable(EngineError):
    """The engine cannot be reached now (e.g. every remote inference server is down).

    Not a fault of the study: the worker puts the job back in the queue, without
    counting a failed attempt, and it runs again once the engine is reachable.
    """
