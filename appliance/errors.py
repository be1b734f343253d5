"""The appliance's exceptions: one base, small subclasses, messages naming the bad value.

:class:`ApplianceError` is the root of the whole project's hierarchy; it is
defined in the leaf module :mod:`engines.errors` (so ``dicom_node``, ``engines``
and ``export`` can derive their bases from it without importing ``appliance``)
and re-exported here. See that module's docstring for the tree.
"""

from __future__ import annotations

from engines.errors import ApplianceError

__all__ = ["ApplianceError", "ConfigError", "JobFailed", "ReportError", "StateError", "StudyIncomplete"]


class ConfigError(ApplianceError):
    """The configuration file or a value in it is invalid."""


class StateError(ApplianceError):
    """The state store is missing, newer than this software, or inconsistent."""


class StudyIncomplete(ApplianceError):
    """A study or series cannot be assembled into a pipeline input."""


class JobFailed(ApplianceError):
    """A job cannot complete; the message is the reason recorded on the job."""


class ReportError(ApplianceError):
    """A result cannot be written as a valid DICOM object."""
