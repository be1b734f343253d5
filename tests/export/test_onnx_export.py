"""torch -> ONNX: parity <= 1e-4, dynamic axes, standard operators, external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.onnx_export import PARITY_TOLERANCE, export_onnx, model_files, run_onnx, save_model
from tests.export.conftest import Exported

TASKS = ("pathology_tile", "pathology_slide", "breast_mri")


@pytest.mark.slow  # export training
@pytest.mark.parametrize("task", TASKS)
def test_fp32_parity_with_pytorch_is_within_tolerance(exported: Exported, task: str) -> None:
    manifest = (exported.cache / "bundles" / f"{task}-0.1.0-demo-fp32" / "manifest.json").read_text()
    import json

    parity = json.loads(manifest)["metrics"]["parity_max_abs_fp32"]
    assert 0.0 <= parity <= PARITY_TOLERANCE


@pytest.mark.slow  # export training
def test_breast_model_exports_to_standard_conv3d_only(exported: Exported) -> None:
    model = onnx.load(str(exported.cache / "work" / "breast_mri" / "fp32" / "model.onnx"))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weights = {t.name: t for t in model.graph.initializer}
    assert len(convs) == 3  # one per 4-D layer (temporal offsets stacked on channels) plus the 3-D layer
    assert all(len(weights[n.input[1]].dims) == 5 for n in convs)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}


@pytest.mark.slow  # export training
def test_dynamic_batch_and_bag_axes_run_at_other_sizes(exported: Exported) -> None:
    tile = exported.cache / "work" / "pathology_tile" / "fp32" / "model.onnx"
    size = exported.models.sizes.tile.tile_size
    (embedding,) = run_onnx(tile, {"image": np.random.default_rng(0).random((7, 3, size, size), dtype=np.float32)})
    assert embedding.shape == (7, exported.models.sizes.tile.embed_dim)
    slide = exported.cache / "work" / "pathology_slide" / "fp32" / "model.onnx"
    bag = np.random.default_rng(1).random((123, exported.models.sizes.mil.embed_dim), dtype=np.float32)
    probability, attention, scores, logits, tile_logits = run_onnx(slide, {"embeddings": bag})
    assert probability.shape == (1,) and attention.shape == (123,) and scores.shape == (123,)
    assert float(attention.sum()) == pytest.approx(1.0, abs=1e-5)
    # bag_pooling: the slide logit is the attention-weighted mean of the tile logits (chunkable exactly)
    w = np.exp(logits.astype(np.float64) - logits.max())
    pooled = float(np.dot(w / w.sum(), tile_logits))
    assert float(probability[0]) == pytest.approx(1.0 / (1.0 + np.exp(-pooled)), abs=1e-6)


def test_external_data_travels_with_the_model(tmp_path: Path) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.ReLU()).eval()
    exported = export_onnx(module, {"input": torch.rand(2, 300)}, ["output"], {"input": {0: "batch"}}, tmp_path / "a.onnx")
    files = save_model(onnx.load(str(exported.path)), tmp_path / "a.onnx", external_data=True)
    assert [f.name for f in files] == ["a.onnx", "a.onnx.data"]
    assert model_files(tmp_path / "a.onnx") == files
    assert (tmp_path / "a.onnx").stat().st_size < 10_000 < (tmp_path / "a.onnx.data").stat().st_size
    x = np.random.default_rng(0).random((3, 300), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(run_onnx(tmp_path / "a.onnx", {"input": x})[0] - expected)) <= PARITY_TOLERANCE
