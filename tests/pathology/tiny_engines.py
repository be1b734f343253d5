"""Tiny pathology engines for tests and benchmarks, built with onnx.helper and run on ONNX Runtime.

The tile engine embeds a tile as its per-channel mean and mean square (plus
a few fixed random projections of the pooled image, for a wider ``D``); the
slide engine scores each tile from its channel means (tumour is darker and
more purple), attends with a softmax over the scores and reports the
attention-weighted probability. The slide engine also outputs its attention
logits and per-tile values and declares ``bag_pooling`` (head "identity"), so
a bag of any size is scored in chunks. They follow the model-card contract of
the demo models, so the pipeline cannot tell them from real bundles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from engines.cards import ModelCard, card_from_dict

#: the tiny models' tensors (every card states them; the tests' cards add only the task's keys)
TENSORS: dict[str, dict[str, Any]] = {
    "pathology_tile": {"inputs": [{"name": "image", "shape": ["N", 3, "S", "S"], "dtype": "float32"}],
                       "outputs": [{"name": "embedding", "shape": ["N", "D"], "dtype": "float32"}]},
    "pathology_slide": {"inputs": [{"name": "embeddings", "shape": ["N", "D"], "dtype": "float32"}],
                        "outputs": [{"name": n, "shape": [1] if n == "probability" else ["N"], "dtype": "float32"}
                                    for n in ("probability", "attention", "tile_scores", "attention_logits",
                                              "tile_logits")]},
}
MEAN = [0.80, 0.60, 0.76]
STD = [0.15, 0.20, 0.15]


@dataclass
class TinyManifest:
    task: str
    model_card: dict[str, Any]
    version: str = "0.0.1"
    vendor: str = "tests"
    precision: str = "fp32"
    sha256: str = "0" * 64
    demo: bool = True
    name: str = field(default="")

    @property
    def card(self) -> ModelCard:
        """The typed card, as ``engines.manifest.Manifest.card`` (built from ``model_card`` as it is now)."""
        return card_from_dict(self.task, {**TENSORS.get(self.task, {}), **self.model_card})


class TinyEngine:
    """ONNX Runtime session behind the Engine interface (``infer``, ``manifest``, ``batch_sizes``)."""

    def __init__(self, model: onnx.ModelProto, manifest: TinyManifest, batch_sizes: range, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.manifest = manifest
        self.batch_sizes = batch_sizes
        self.calls = 0

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, inputs)))

    def close(self) -> None:
        pass


def tile_model(dim: int = 16, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    proj = rng.normal(0, 0.3, (3 * 16, dim - 6)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["m"], keepdims=0),
        helper.make_node("Mul", ["image", "image"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["m2"], keepdims=0),
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[1, 1], strides=[1, 1]),
        helper.make_node("GlobalMaxPool", ["image"], ["gmax"]),
        helper.make_node("Flatten", ["gmax"], ["gflat"], axis=1),
        helper.make_node("Tile", ["gflat", "reps"], ["g16"]),
        helper.make_node("MatMul", ["g16", "proj"], ["p"]),
        helper.make_node("Tanh", ["p"], ["pt"]),
        helper.make_node("Concat", ["m", "m2", "pt"], ["embedding"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_tile",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "S", "S"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
         numpy_helper.from_array(np.array([1, 16], np.int64), "reps"),
         numpy_helper.from_array(proj, "proj")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def slide_model(dim: int = 16, bias: float = -4.0, gain: float = 2.0) -> onnx.ModelProto:
    """score = sigmoid(-gain * sum(channel means) + bias); attention = softmax(4 * score)."""
    w = np.zeros((dim, 1), np.float32)
    w[:3, 0] = -gain
    nodes = [
        helper.make_node("MatMul", ["embeddings", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["s2"]),
        helper.make_node("Flatten", ["s2"], ["s2f"], axis=0),
        helper.make_node("Squeeze", ["s2f", "zero"], ["tile_scores"]),
        helper.make_node("Mul", ["tile_scores", "four"], ["attention_logits"]),
        helper.make_node("Identity", ["attention_logits"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["attention"], axis=0),
        helper.make_node("Mul", ["attention", "tile_scores"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "zero"], ["probability"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_slide",
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", dim])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("tile_scores", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("attention_logits", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([bias], np.float32), "b"),
         numpy_helper.from_array(np.array([0], np.int64), "zero"),
         numpy_helper.from_array(np.array(4.0, np.float32), "four")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def tiny_engines(tile_size: int = 64, mpp: float = 1.0, dim: int = 16, threads: int = 1,
                 max_batch: int = 64, max_bag: int = 1_000_000,
                 pooling: bool = True) -> tuple[TinyEngine, TinyEngine]:
    """(tile engine, slide engine) with demo-style model cards; ``pooling``: declare ``bag_pooling``."""
    tile_card = {"tile_size": tile_size, "mpp": mpp, "mean": MEAN, "std": STD, "name": "tiny tile"}
    slide_card: dict[str, Any] = {"threshold": 0.5, "labels": ["normal", "tumour"], "name": "tiny slide"}
    if pooling:
        slide_card["bag_pooling"] = {"attention_logits": "attention_logits", "tile_values": "tile_scores",
                                     "head": "identity"}
    tile = TinyEngine(tile_model(dim), TinyManifest("pathology_tile", tile_card), range(1, max_batch + 1), threads)
    slide = TinyEngine(slide_model(dim), TinyManifest("pathology_slide", slide_card), range(1, max_bag + 1), threads)
    return tile, slide
