"""The encoder gate: embedding cosine to fp32 (mean, 1st percentile) and slide AUC through the aggregator."""

from __future__ import annotations

import numpy as np
import pytest

from export.gate import GateConfig, cosine_to_reference, evaluate_embeddings, format_table


def _slides() -> tuple[np.ndarray, list[slice], np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 10)
    emb = rng.standard_normal((20 * 8, 16)).astype(np.float32)
    for i, y in enumerate(labels):
        emb[i * 8 : (i + 1) * 8, 0] += 3.0 * y  # the tumour signal lives in channel 0
    return emb, [slice(i * 8, (i + 1) * 8) for i in range(20)], labels


def aggregate(e: np.ndarray) -> float:
    return float(1.0 / (1.0 + np.exp(-e[:, 0].mean())))


def test_close_embeddings_pass_with_their_figures() -> None:
    emb, bags, labels = _slides()
    noisy = emb + np.random.default_rng(1).standard_normal(emb.shape).astype(np.float32) * 0.01
    results = evaluate_embeddings(labels, {"fp32": emb, "int8": noisy}, bags, aggregate, 0.5, GateConfig())
    assert results["fp32"].cosine_mean == pytest.approx(1.0) and results["fp32"].auc == 1.0
    assert results["int8"].passed and 0.99 < results["int8"].cosine_p1 <= results["int8"].cosine_mean < 1.0
    assert "cos mean" in format_table("pathology_tile", results)


def test_a_few_broken_tiles_fail_the_1st_percentile_only() -> None:
    emb, bags, labels = _slides()
    broken = emb.copy()
    broken[:4] = -broken[:4]  # 4 of 160 tiles flipped: the mean stays high, the 1st percentile does not
    results = evaluate_embeddings(labels, {"fp32": emb, "fp16": broken}, bags, aggregate, 0.5,
                                  GateConfig(min_cosine_mean=0.9, max_probability_diff=1.0, min_agreement=0.0))  # fmt: skip
    m = results["fp16"]
    assert not m.passed and m.cosine_mean > 0.9
    assert m.reasons == (f"embedding cosine 1st percentile {m.cosine_p1:.4f} < 0.9500",)


def test_cosine_rows() -> None:
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, -1.0]])
    assert cosine_to_reference(a, b).tolist() == pytest.approx([1.0, 1.0, -1.0])
