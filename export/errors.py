"""Errors of the export stage (never imported by the running appliance).

Under the project's root :class:`~engines.errors.ApplianceError` (export -> engines
is an allowed arrow), so the CLI reports them like every other library error.
"""

from __future__ import annotations

from engines.errors import ApplianceError


class ExportError(ApplianceError):
    """Base of the export stage's errors; the message names the bad value and what is valid."""


class ParityError(ExportError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


class QdqRuleError(ExportError):
    """A Q/DQ graph breaks a rule TensorRT's explicit quantization needs."""


class GateFailed(ExportError):
    """A precision misses the configured accuracy gate; the message is the table of numbers."""


class TrainingDataMissing(ExportError):
    """The synthetic-data generators the demo training needs are not available."""


__all__ = ["ExportError", "GateFailed", "ParityError", "QdqRuleError", "TrainingDataMissing"]
