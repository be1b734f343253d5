"""The appliance's exceptions: one base, small subclasses, messages naming the bad value."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance reports to an operator."""


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
