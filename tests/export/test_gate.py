"""Accuracy gate: AUC, agreement, probability difference; a broken quantization fails the export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from export.demo import QUICK_GATE
from export.errors import ExportError, GateFailed
from export.gate import GateConfig, enforce, evaluate, format_table, roc_auc
from export.pipeline import convert_task
from tests.export.conftest import Exported


@pytest.mark.parametrize(
    ("labels", "scores", "auc"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
    ],
)
def test_roc_auc(labels: list[int], scores: list[float], auc: float) -> None:
    assert roc_auc(np.array(labels), np.array(scores)) == pytest.approx(auc)


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ExportError, match="needs both classes"):
        roc_auc(np.array([1, 1]), np.array([0.2, 0.3]))


def test_a_precision_that_misses_the_gate_fails_with_a_table() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    fp32 = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    results = evaluate(labels, {"fp32": fp32, "int8": fp32[::-1].copy()}, 0.5, GateConfig())
    assert results["fp32"].passed and not results["int8"].passed
    assert results["int8"].agreement == 0.0
    with pytest.raises(GateFailed, match=r"int8 missed the gate(.|\n)*int8 +0\.0000 +0\.00%"):
        enforce("pathology_slide", results)
    assert "FAIL" in format_table("pathology_slide", results)


@pytest.mark.slow  # export training
def test_calibrating_on_constant_images_fails_the_gate(exported: Exported, tmp_path: Path) -> None:
    spec = replace(exported.specs["pathology_tile"])
    spec.calibration = [{"image": np.zeros_like(feed["image"])} for feed in spec.calibration[:2]]
    with pytest.raises(GateFailed, match=r"int8 missed the gate"):
        convert_task(spec, tmp_path / "broken", ("fp32", "int8"), QUICK_GATE)
