"""Accuracy gate on a held-out set: AUC, label agreement with fp32, max probability difference.

Every precision is scored against the labels and against the fp32 model's own
probabilities; a precision that misses the configured gate fails the export with
a table of all the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from export.errors import ExportError, GateFailed


@dataclass(frozen=True)
class GateConfig:
    """Limits a reduced precision must meet relative to fp32."""

    max_auc_drop: float = 0.01  #: AUC(fp32) - AUC(precision)
    min_agreement: float = 0.98  #: fraction of cases whose label (p >= threshold) matches fp32's
    max_probability_diff: float = 0.05  #: largest |p - p_fp32| over the held-out set
    min_auc: float = 0.0  #: absolute floor for every precision, fp32 included


@dataclass(frozen=True)
class PrecisionMetrics:
    """Numbers measured for one precision; written into the bundle manifest."""

    precision: str
    auc: float
    agreement: float
    max_probability_diff: float
    cases: int
    passed: bool
    reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        values = asdict(self)
        values["reasons"] = list(self.reasons)
        return values


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ExportError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ExportError(f"AUC needs both classes, got {positives} positive and {negatives} negative cases")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def evaluate(
    labels: np.ndarray,
    probabilities: Mapping[str, np.ndarray],
    threshold: float,
    gate: GateConfig = GateConfig(),
) -> dict[str, PrecisionMetrics]:
    """Score every precision (``probabilities`` must include ``fp32``) against the gate."""
    if "fp32" not in probabilities:
        raise ExportError(f"the gate compares against fp32, got precisions {sorted(probabilities)}")
    reference = np.asarray(probabilities["fp32"], dtype=np.float64).ravel()
    reference_auc = roc_auc(labels, reference)
    results = {}
    for precision, probs in probabilities.items():
        p = np.asarray(probs, dtype=np.float64).ravel()
        if p.shape != reference.shape:
            raise ExportError(f"{precision}: {p.size} probabilities, fp32 has {reference.size}")
        auc = roc_auc(labels, p)
        agreement = float(np.mean((p >= threshold) == (reference >= threshold)))
        diff = float(np.max(np.abs(p - reference)))
        reasons = []
        if not np.all(np.isfinite(p)):
            reasons.append("non-finite probabilities")
        if auc < gate.min_auc:
            reasons.append(f"AUC {auc:.4f} < {gate.min_auc:.4f}")
        if reference_auc - auc > gate.max_auc_drop:
            reasons.append(f"AUC drop {reference_auc - auc:.4f} > {gate.max_auc_drop:.4f}")
        if agreement < gate.min_agreement:
            reasons.append(f"agreement {agreement:.2%} < {gate.min_agreement:.2%}")
        if diff > gate.max_probability_diff:
            reasons.append(f"max |dp| {diff:.4f} > {gate.max_probability_diff:.4f}")
        results[precision] = PrecisionMetrics(precision, auc, agreement, diff, int(p.size), not reasons, tuple(reasons))
    return results


def format_table(task: str, results: Mapping[str, PrecisionMetrics]) -> str:
    """A plain-text table of the gate's numbers, one row per precision."""
    lines = [f"accuracy gate for {task}:", f"{'precision':<10} {'AUC':>7} {'agree':>8} {'max|dp|':>9} {'cases':>6}  result"]
    for m in results.values():
        verdict = "pass" if m.passed else "FAIL: " + "; ".join(m.reasons)
        lines.append(
            f"{m.precision:<10} {m.auc:7.4f} {m.agreement:8.2%} {m.max_probability_diff:9.4f} {m.cases:6d}  {verdict}"
        )
    return "\n".join(lines)


def enforce(task: str, results: Mapping[str, PrecisionMetrics]) -> None:
    """Raise GateFailed with the table when any precision missed the gate."""
    failed = [m.precision for m in results.values() if not m.passed]
    if failed:
        raise GateFailed(f"{', '.join(failed)} missed the gate\n{format_table(task, results)}")
