"""Accuracy gate on a held-out set: AUC, label agreement with fp32, max probability difference.

Every precision is scored against the labels and against the fp32 model's own
probabilities; a precision that misses the configured gate fails the export with
a table of all the numbers. A tile encoder is gated on what it produces: its
embeddings' cosine similarity to fp32 (mean and 1st percentile over the held-out
tiles) and the slide-score AUC of the aggregator fed each precision's embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from export.errors import ExportError, GateFailed


@dataclass(frozen=True)
class GateConfig:
    """Limits a reduced precision must meet relative to fp32."""

    max_auc_drop: float = 0.01  #: AUC(fp32) - AUC(precision)
    min_agreement: float = 0.98  #: fraction of cases whose label (p >= threshold) matches fp32's
    max_probability_diff: float = 0.05  #: largest |p - p_fp32| over the held-out set
    min_auc: float = 0.0  #: absolute floor for every precision, fp32 included
    min_cosine_mean: float = 0.99  #: encoders: mean cosine similarity of embeddings to fp32
    min_cosine_p1: float = 0.95  #: encoders: 1st percentile of that cosine similarity


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
    cosine_mean: float | None = None  #: encoders: mean cosine similarity of embeddings to fp32
    cosine_p1: float | None = None  #: encoders: 1st percentile of it

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


def cosine_to_reference(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] embedding matrices (a zero row against a zero row is 1)."""
    a = np.asarray(reference, np.float64)
    b = np.asarray(other, np.float64)
    if a.shape != b.shape:
        raise ExportError(f"embeddings {b.shape} differ in shape from fp32's {a.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    out: np.ndarray = np.where(norms > 0, dots / np.maximum(norms, 1e-30), np.where(np.all(a == b, axis=1), 1.0, 0.0))
    return out


def evaluate_embeddings(
    labels: np.ndarray,
    embeddings: Mapping[str, np.ndarray],
    bags: Sequence[slice],
    aggregate: Callable[[np.ndarray], float],
    threshold: float,
    gate: GateConfig = GateConfig(),
) -> dict[str, PrecisionMetrics]:
    """Gate a tile encoder: slide AUC from ``aggregate`` over each bag, and embedding cosine to fp32.

    ``embeddings`` maps precision to [tiles, D]; ``bags[i]`` are slide i's rows and
    ``labels[i]`` its label; ``aggregate`` turns one slide's embeddings into its score.
    """
    if "fp32" not in embeddings:
        raise ExportError(f"the gate compares against fp32, got precisions {sorted(embeddings)}")
    if len(bags) != len(labels):
        raise ExportError(f"{len(bags)} slides but {len(labels)} slide labels")
    scores = {p: np.asarray([aggregate(e[bag]) for bag in bags]) for p, e in embeddings.items()}
    results = evaluate(labels, scores, threshold, gate)
    for precision, e in embeddings.items():
        cosine = cosine_to_reference(embeddings["fp32"], e)
        mean, p1 = float(np.mean(cosine)), float(np.percentile(cosine, 1))
        m = results[precision]
        reasons = list(m.reasons)
        if not mean >= gate.min_cosine_mean:
            reasons.append(f"embedding cosine mean {mean:.4f} < {gate.min_cosine_mean:.4f}")
        if not p1 >= gate.min_cosine_p1:
            reasons.append(f"embedding cosine 1st percentile {p1:.4f} < {gate.min_cosine_p1:.4f}")
        results[precision] = replace(m, cosine_mean=mean, cosine_p1=p1, passed=not reasons, reasons=tuple(reasons))
    return results


def format_table(task: str, results: Mapping[str, PrecisionMetrics]) -> str:
    """A plain-text table of the gate's numbers, one row per precision."""
    cos = any(m.cosine_mean is not None for m in results.values())
    head = f"{'precision':<10} {'AUC':>7} {'agree':>8} {'max|dp|':>9} {'cases':>6}"
    lines = [f"accuracy gate for {task}:", head + (f" {'cos mean':>9} {'cos p1':>8}" if cos else "") + "  result"]
    for m in results.values():
        verdict = "pass" if m.passed else "FAIL: " + "; ".join(m.reasons)
        row = f"{m.precision:<10} {m.auc:7.4f} {m.agreement:8.2%} {m.max_probability_diff:9.4f} {m.cases:6d}"
        if cos:
            row += f" {m.cosine_mean or 0.0:9.5f} {m.cosine_p1 or 0.0:8.5f}"
        lines.append(f"{row}  {verdict}")
    return "\n".join(lines)


def enforce(task: str, results: Mapping[str, PrecisionMetrics]) -> None:
    """Raise GateFailed with the table when any precision missed the gate."""
    failed = [m.precision for m in results.values() if not m.passed]
    if failed:
        raise GateFailed(f"{', '.join(failed)} missed the gate\n{format_table(task, results)}")
