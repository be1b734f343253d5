"""Errors of the engines package, and the root of every error the project reports.

One hierarchy (shared/STYLE.md): :class:`ApplianceError` is the base of every
package's errors, and each package keeps its own base under it:

    ApplianceError                      (defined here; re-exported by ``appliance.errors``)
    ├── EngineError                     engines: BundleRejected, RuntimeMissing, EngineUnavailable, ...
    ├── dicom_node.errors.NodeError     the DICOM node: DeliveryFailed, SenderStopped, NotDurable, ...
    ├── export.errors.ExportError       the export stage: GateFailed, ParityError, ...
    └── the appliance's own (appliance.errors): ConfigError, StudyIncomplete, JobFailed, ...

The root lives here because this module is a leaf (standard library only) that
every package may import without breaking the package arrows: nothing imports
``appliance``, ``engines`` does not know DICOM, and ``export`` is never imported
by the running appliance. Callers decide control flow on these types (the CLI
reports any ``ApplianceError`` as one line; delivery retries on
``SenderStopped``), never on a message's text or an exception's module name.
"""

from __future__ import annotations

__all__ = ["ApplianceError", "BundleRejected", "EngineError", "EngineUnavailable", "RuntimeMissing"]


class ApplianceError(Exception):
    """Base of every error the appliance reports to an operator (all packages)."""


class EngineError(ApplianceError):
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
