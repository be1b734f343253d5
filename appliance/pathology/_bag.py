"""The slide-level aggregator over a bag of any size: attention pooling in chunks, combined exactly.

An attention-MIL aggregator scores a slide as ``head(sum_i a_i v_i)`` with
``a = softmax(z)`` over the whole bag, where the attention logit ``z_i`` and
the per-tile value ``v_i`` depend on tile ``i`` alone (for the gated-attention
MIL of Ilse et al. with a linear classifier, ``v_i`` is the classifier's
logit of tile ``i``, because ``W (sum_i a_i h_i) + b = sum_i a_i (W h_i + b)``).
An engine whose model card declares ``bag_pooling`` (see
:data:`engines.cards.BAG_POOLING_HEADS`) outputs ``z`` and ``v`` per tile,
so the bag is run chunk by chunk (each within the engine's batch range and a
bounded amount of memory) and the softmax is taken over all chunks with the
log-sum-exp trick, in float64: the same score as the bag in one piece.

An engine without ``bag_pooling`` is run on the bag in one piece, which only
works up to its largest accepted batch; beyond it the job is refused with the
reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.errors import JobFailed
from appliance.findings import task_card
from engines.cards import PathologySlideCard
from engines.errors import EngineUnavailable

__all__ = ["BagScores", "score_bag"]


@dataclass(frozen=True)
class BagScores:
    """What the aggregator says about one slide."""

    probability: float
    attention: np.ndarray  #: (N,) float32, sums to 1 over the bag
    tile_scores: np.ndarray  #: (N,) float32 in [0, 1]


def _head(name: str, x: np.ndarray) -> np.ndarray:
    if name == "sigmoid":
        out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
        return out
    return x  # "identity" (the manifest admits no other)


def _call(engine: Any, x: np.ndarray, what: str) -> dict[str, np.ndarray]:
    try:
        return dict(engine.infer({"embeddings": x}))
    except EngineUnavailable:
        raise  # not the study's fault: the worker puts the job back in the queue
    except Exception as exc:
        raise JobFailed(f"{what} engine failed: {exc}") from exc


def _pad(x: np.ndarray, least: int) -> np.ndarray:
    if x.shape[0] >= least:
        return x
    return np.concatenate([x, np.zeros((least - x.shape[0],) + x.shape[1:], x.dtype)])


def _one_piece(engine: Any, embeddings: np.ndarray, limit: int, name: str) -> BagScores:
    n = embeddings.shape[0]
    if n > limit:
        raise JobFailed(
            f"slide engine {name} accepts bags of at most {limit} tiles and its model card declares no "
            f"'bag_pooling' for scoring a bag in chunks; this slide has {n} tissue tiles"
        )
    out = _call(engine, np.ascontiguousarray(embeddings, dtype=np.float32), "slide")
    probability = float(np.asarray(out["probability"]).reshape(-1)[0])
    attention = np.asarray(out.get("attention", np.full(n, 1.0 / n)), np.float32).reshape(-1)[:n]
    scores = np.asarray(out["tile_scores"], np.float32).reshape(-1)[:n]
    return BagScores(probability, attention, scores)


def score_bag(engine: Any, embeddings: np.ndarray, chunk: int) -> BagScores:
    """Score the bag ``embeddings`` (N, D), which may be a disk-backed memmap, ``chunk`` tiles at a time."""
    n = int(embeddings.shape[0])
    if n == 0:
        raise JobFailed("the slide engine needs at least one tile embedding")
    manifest = engine.manifest
    name = f"{manifest.task}/{manifest.version}"
    sizes = getattr(engine, "batch_sizes", None)
    least, most = (sizes.start, sizes.stop - 1) if sizes is not None else (1, n)
    pooling = task_card(manifest, PathologySlideCard).bag_pooling
    if pooling is None:
        return _one_piece(engine, embeddings, most, name)
    step = max(1, min(chunk, most))
    z = np.empty(n, np.float64)
    v = np.empty(n, np.float64)
    scores = np.empty(n, np.float32)
    for a in range(0, n, step):
        b = min(n, a + step)
        x = np.ascontiguousarray(embeddings[a:b], dtype=np.float32)  # one chunk in memory, never the bag
        out = _call(engine, _pad(x, least), "slide")
        for key in (pooling.attention_logits, pooling.tile_values):
            if key not in out:
                raise JobFailed(f"slide engine {name} declares bag_pooling output {key!r} but did not return it")
        z[a:b] = np.asarray(out[pooling.attention_logits], np.float64).reshape(-1)[: b - a]
        v[a:b] = np.asarray(out[pooling.tile_values], np.float64).reshape(-1)[: b - a]
        if "tile_scores" in out:
            scores[a:b] = np.asarray(out["tile_scores"], np.float32).reshape(-1)[: b - a]
        else:
            scores[a:b] = _head(pooling.head, v[a:b])
    if not (np.isfinite(z).all() and np.isfinite(v).all()):
        raise JobFailed(f"slide engine {name} returned non-finite attention logits or tile values")
    w = np.exp(z - z.max())  # log-sum-exp: exact softmax whatever the logits' range
    total = float(w.sum())
    pooled = float(np.dot(w, v) / total)
    probability = float(_head(pooling.head, np.asarray(pooled)))
    return BagScores(probability, (w / total).astype(np.float32), scores)
