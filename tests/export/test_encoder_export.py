"""A site's ViT checkpoint through ``appliance export --encoder``: bundles, model card, gate, refusals.

The checkpoint is a full-depth ViT-S/16 in timm's layout (random values, LayerScale,
``model.`` prefix, 224 px position grid) exported at 64 px tiles (grid resampled)
with the quick data set, so the whole export runs in well under a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from appliance.cli import app
from engines.bundle import verify_bundle
from export.checkpoint import CheckpointRejected
from export.qdq_rules import check_qdq_model
from tests.export.test_vit import _random_state, _save, timm_layout

pytestmark = pytest.mark.slow  # export training: a ViT trained and exported


@pytest.fixture(scope="module")
def site_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("site")
    ckpt = _save(_random_state(timm_layout("vit-s16", grid=14, layer_scale=True)), tmp / "uni-like.safetensors", "model.")
    out = tmp / "out"
    result = CliRunner().invoke(app, [
        "export", "--quick", "--out", str(out), "--task", "pathology_tile", "--encoder", "vit-s16",
        "--checkpoint", str(ckpt), "--tile-size", "64", "--readout", "cls+mean",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_site_checkpoint_exports_gated_encoder_and_aggregator_bundles(site_export: Path) -> None:
    for precision in ("fp32", "fp16", "int8"):
        manifest = verify_bundle(site_export / "bundles" / f"pathology_tile-0.1.0-{precision}", site_export / "trusted_keys")
        card = manifest.model_card
        assert (card["encoder"], card["embedding_size"], card["tile_size"], card["mpp"]) == ("vit-s16", 768, 64, 0.5)
        assert card["mean"] == [0.485, 0.456, 0.406] and card["std"] == [0.229, 0.224, 0.225]
        assert card["inputs"][0]["shape"] == ["N", 3, 64, 64] and card["inputs"][0]["dtype"] == "float32"
        gate = manifest.metrics["gate"]
        assert gate["passed"] and gate["cosine_mean"] >= 0.99 and gate["cosine_p1"] >= 0.95
        slide = verify_bundle(site_export / "bundles" / f"pathology_slide-0.1.0-{precision}", site_export / "trusted_keys")
        assert slide.model_card["inputs"][0]["shape"] == ["N", 768] and slide.model_card["encoder"] == "vit-s16"


def test_cpu_bundle_is_fused_and_int8_obeys_the_transformer_qdq_rules(site_export: Path) -> None:
    fused = onnx.load(str(site_export / "bundles" / "pathology_tile-0.1.0-fp32" / "model.onnx"), load_external_data=False)
    ops = {n.op_type for n in fused.graph.node}
    assert {"SkipLayerNormalization", "BiasGelu"} <= ops, ops
    summary = check_qdq_model(site_export / "bundles" / "pathology_tile-0.1.0-int8" / "model.onnx", residual_adds=False)
    # every projection and the patch conv quantized but block 0's qkv, kept float (export.int8.TRANSFORMER_INT8)
    assert summary.attention_matmuls == 24 and summary.weighted_ops == 12 * 4 and summary.float_weighted_ops == 1
    fp16 = onnx.load(str(site_export / "work" / "pathology_tile" / "fp16" / "model.onnx"))
    by_type: dict[str, set[int]] = {}
    for node in fp16.graph.node:
        by_type.setdefault(node.op_type, set()).update(
            {v.type.tensor_type.elem_type for v in fp16.graph.value_info if v.name in node.output}
        )
    assert by_type["LayerNormalization"] == {onnx.TensorProto.FLOAT}
    assert by_type["Softmax"] == {onnx.TensorProto.FLOAT}
    manifest = json.loads((site_export / "bundles" / "pathology_tile-0.1.0-fp16" / "manifest.json").read_text())
    assert manifest["precision"] == "fp16"


def test_checkpoint_with_a_wrong_shape_is_refused_by_the_cli(tmp_path: Path) -> None:
    state = _random_state(timm_layout("vit-s16", grid=14))
    state["blocks.3.attn.qkv.weight"] = state["blocks.3.attn.qkv.weight"][:, :100]
    ckpt = _save(state, tmp_path / "bad.pt")
    result = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "o"), "--encoder", "vit-s16", "--checkpoint", str(ckpt)])
    assert isinstance(result.exception, CheckpointRejected)
    assert "blocks.3.attn.qkv.weight: checkpoint (1152, 100)" in str(result.exception)
