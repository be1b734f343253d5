"""The slide aggregator over any bag size: chunks combined exactly, disk-backed bags, clear refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from appliance.errors import JobFailed
from appliance.pathology._bag import score_bag
from engines.errors import BundleRejected
from engines.cards import BagPooling
from export.models.mil import BAG_POOLING, GatedAttentionMIL, MilConfig
from tests.pathology.tiny_engines import TinyManifest, tiny_engines

BIG_BAG = 200_000


class TorchMil:
    """The exported MIL's definition (``PooledMIL``) behind the engine interface, in float32."""

    def __init__(self, max_bag: int) -> None:
        torch.manual_seed(0)
        self.model = GatedAttentionMIL(MilConfig(embed_dim=16, hidden=16, attention=8)).eval()
        card = {"bag_pooling": dict(BAG_POOLING), "threshold": 0.5}
        self.manifest = TinyManifest("pathology_slide", card)
        self.batch_sizes = range(1, max_bag + 1)
        self.calls = 0

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        names = ("probability", "attention", "tile_scores", "attention_logits", "tile_logits")
        with torch.no_grad():
            out = self.model.pooled(torch.from_numpy(inputs["embeddings"]))
        return {n: t.numpy() for n, t in zip(names, out)}


def _bag(n: int, dim: int = 16, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, dim)).astype(np.float32)
    x[: n // 50] += 1.5  # a few strongly attended tiles
    return x


def test_200k_tiles_in_chunks_score_like_one_piece_gated_attention_mil() -> None:
    torch.set_num_threads(1)
    bag = _bag(BIG_BAG)
    engine = TorchMil(max_bag=65536)
    chunked = score_bag(engine, bag, chunk=16384)
    assert engine.calls == -(-BIG_BAG // 16384)
    whole = engine.infer({"embeddings": bag})
    assert abs(chunked.probability - float(whole["probability"][0])) <= 1e-5
    np.testing.assert_allclose(chunked.attention, whole["attention"], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(chunked.tile_scores, whole["tile_scores"], atol=1e-6)
    assert abs(float(chunked.attention.sum()) - 1.0) < 1e-5


def test_200k_tiles_in_chunks_score_like_one_piece_onnx_runtime(tmp_path: Path) -> None:
    """The bag kept in a disk-backed array, chunked through ONNX Runtime, against one ORT call."""
    _, chunking = tiny_engines(max_bag=20_000, pooling=True)
    _, whole = tiny_engines(max_bag=BIG_BAG, pooling=False)
    bag = np.memmap(tmp_path / "bag.f32", np.float32, "w+", shape=(BIG_BAG, 16))
    bag[:] = np.abs(_bag(BIG_BAG, seed=2)) * 0.3
    chunked = score_bag(chunking, bag, chunk=50_000)  # capped by the engine's 20,000
    assert chunking.calls == 10
    one = score_bag(whole, bag, chunk=50_000)
    assert whole.calls == 1
    assert abs(chunked.probability - one.probability) <= 1e-5
    np.testing.assert_allclose(chunked.attention, one.attention, rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(chunked.tile_scores, one.tile_scores)


def test_a_bag_beyond_the_engine_without_bag_pooling_is_refused_with_the_reason() -> None:
    _, slide = tiny_engines(max_bag=1000, pooling=False)
    with pytest.raises(JobFailed, match=r"at most 1000 tiles .* declares no 'bag_pooling' .* has 1001 tissue tiles"):
        score_bag(slide, _bag(1001), chunk=4096)


def test_an_engine_that_does_not_return_its_declared_outputs_fails_the_job() -> None:
    class Liar(TorchMil):
        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
            out = super().infer(inputs)
            del out["tile_logits"]
            return out

    with pytest.raises(JobFailed, match="declares bag_pooling output 'tile_logits' but did not return it"):
        score_bag(Liar(max_bag=64), _bag(100), chunk=64)


@pytest.mark.parametrize(("pooling", "message"), [
    ({"attention_logits": "a", "tile_values": "nope", "head": "sigmoid"}, "tile_values 'nope' is not one of the outputs"),
    ({"attention_logits": "a", "tile_values": "v", "head": "softmax"}, "head 'softmax' is not one of sigmoid, identity"),
    ({"attention_logits": "a"}, "must be an object with exactly attention_logits, tile_values, head"),
])
def test_the_manifest_checks_bag_pooling(pooling: dict[str, str], message: str) -> None:
    with pytest.raises(BundleRejected, match=message):
        BagPooling.from_card(pooling, ("a", "v", "probability"))
