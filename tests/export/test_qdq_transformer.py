"""The Q/DQ rule checker's transformer patterns: attention MatMuls, LayerNorm / Softmax / GELU in float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from export.errors import QdqRuleError
from export.int8 import TRANSFORMER_INT8, TRANSFORMER_OP_TYPES, Int8Settings, quantize_int8
from export.models.vit import VisionTransformer, preset
from export.onnx_export import export_onnx
from export.qdq_rules import check_qdq_model


@pytest.fixture(scope="module")
def vit_int8(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    tmp = tmp_path_factory.mktemp("qdq-vit")
    torch.manual_seed(0)
    model = VisionTransformer(preset("vit-s16", depth=1, tile_size=32))
    image = torch.randn(2, 3, 32, 32)
    export_onnx(model, {"image": image}, ("embedding",), {"image": {0: "batch"}}, tmp / "fp32.onnx")
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)} for _ in range(2)]
    quantize_int8(tmp / "fp32.onnx", tmp / "int8.onnx", feeds, Int8Settings(op_types=TRANSFORMER_OP_TYPES))
    return onnx.load(str(tmp / "int8.onnx"))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_vit_int8_graph_passes_with_attention_matmuls_quantized(vit_int8: onnx.ModelProto) -> None:
    summary = check_qdq_model(vit_int8, residual_adds=False)
    assert summary.attention_matmuls == 2  # Q @ K^T and softmax @ V of the one block
    assert summary.weighted_ops == 5  # patch conv, qkv, proj, fc1, fc2
    assert summary.float_only_ops >= 3  # LayerNorm x3 (norm1, norm2, norm), Softmax, Erf
    with pytest.raises(QdqRuleError, match="residual Add .* is not quantized"):
        check_qdq_model(vit_int8, residual_adds=True)  # the CNN rule: a transformer keeps its residual stream float


def test_attention_matmul_with_a_float_input_is_refused(vit_int8: onnx.ModelProto) -> None:
    model = _copy(vit_int8)
    producer = {o: n for n in model.graph.node for o in n.output}
    init = {t.name for t in model.graph.initializer}
    attention = next(n for n in model.graph.node if n.op_type == "MatMul" and producer[n.input[1]].input[0] not in init)
    q = producer[producer[attention.input[1]].input[0]]  # DequantizeLinear <- QuantizeLinear <- float tensor
    attention.input[1] = q.input[0]
    with pytest.raises(QdqRuleError, match=rf"attention MatMul '{attention.name}': right input '{q.input[0]}' is not quantized"):
        check_qdq_model(model, residual_adds=False)


def test_dequantized_input_to_layernorm_is_refused(vit_int8: onnx.ModelProto) -> None:
    model = _copy(vit_int8)
    norm = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    source = norm.input[0]
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(0.05, np.float32), "ln_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "ln_zero"),
    ])  # fmt: skip
    model.graph.node.extend([
        helper.make_node("QuantizeLinear", [source, "ln_scale", "ln_zero"], ["ln_q"], name="ln_q"),
        helper.make_node("DequantizeLinear", ["ln_q", "ln_scale", "ln_zero"], ["ln_dq"], name="ln_dq"),
    ])  # fmt: skip
    norm.input[0] = "ln_dq"
    with pytest.raises(QdqRuleError, match=rf"LayerNormalization '{norm.name}': input 'ln_dq' is dequantized"):
        check_qdq_model(model, residual_adds=False)


def test_saved_graph_checks_from_a_path(vit_int8: onnx.ModelProto, tmp_path: Path) -> None:
    onnx.save(vit_int8, str(tmp_path / "m.onnx"))
    assert check_qdq_model(tmp_path / "m.onnx", residual_adds=False).attention_matmuls == 2


def test_attention_values_kept_float_pass_the_rules(tmp_path: Path) -> None:
    """``float_attention_values``: softmax @ V stays float as a whole (both inputs), which TensorRT accepts."""
    torch.manual_seed(0)
    model = VisionTransformer(preset("vit-s16", depth=1, tile_size=32))
    export_onnx(model, {"image": torch.randn(2, 3, 32, 32)}, ("embedding",), {"image": {0: "batch"}}, tmp_path / "f.onnx")
    feeds = [{"image": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}]
    settings = Int8Settings(op_types=TRANSFORMER_OP_TYPES, float_attention_values=True)
    quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", feeds, settings)
    model_q = onnx.load(str(tmp_path / "q.onnx"))
    producer = {o: n.op_type for n in model_q.graph.node for o in n.output}
    values = [n for n in model_q.graph.node if n.op_type == "MatMul" and producer.get(n.input[0]) == "Softmax"]
    assert len(values) == 1 and producer[values[0].input[1]] != "DequantizeLinear"
    assert check_qdq_model(model_q, residual_adds=False).attention_matmuls == 2


def test_transformer_int8_keeps_only_the_first_blocks_qkv_and_attention_values_float(tmp_path: Path) -> None:
    """The export's ViT int8 (TRANSFORMER_INT8): block 0's qkv (reading the first LayerNorm) float as a whole;
    every other projection quantized on both inputs. Chosen on the demo-trained ViT-S/16: cosine p1 0.797 -> 0.999."""
    torch.manual_seed(0)
    model = VisionTransformer(preset("vit-s16", depth=2, tile_size=32))
    export_onnx(model, {"image": torch.randn(2, 3, 32, 32)}, ("embedding",), {"image": {0: "batch"}}, tmp_path / "f.onnx")
    feeds = [{"image": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}]
    quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", feeds, TRANSFORMER_INT8)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    producer = {o: n for n in quantized.graph.node for o in n.output}
    init = {t.name for t in quantized.graph.initializer}
    first_norm = next(n for n in quantized.graph.node if n.op_type == "LayerNormalization")
    float_projections = [
        n for n in quantized.graph.node
        if n.op_type == "MatMul" and n.input[1] in init and producer[n.input[0]].op_type != "DequantizeLinear"
    ]  # fmt: skip
    assert [n.input[0] for n in float_projections] == [first_norm.output[0]]
    assert float_projections[0].input[1] in init  # its weight stays the float initializer
    summary = check_qdq_model(quantized, residual_adds=False)
    assert summary.float_weighted_ops == 1 and summary.weighted_ops == 1 + 2 * 4 - 1  # patch conv + 2 blocks' 4, less qkv 0
    assert summary.attention_matmuls == 4
    with pytest.raises(QdqRuleError, match="is not quantized"):
        check_qdq_model(quantized, residual_adds=True)  # the CNN rule keeps every weighted op quantized


def test_projection_with_one_quantized_input_is_refused(vit_int8: onnx.ModelProto) -> None:
    model = _copy(vit_int8)
    producer = {o: n for n in model.graph.node for o in n.output}
    init = {t.name for t in model.graph.initializer}
    projection = next(
        n for n in model.graph.node
        if n.op_type == "MatMul" and producer.get(n.input[1]) is not None and producer[n.input[1]].input[0] in init
    )  # fmt: skip
    q = producer[producer[projection.input[0]].input[0]]  # DequantizeLinear <- QuantizeLinear <- float activation
    projection.input[0] = q.input[0]
    with pytest.raises(QdqRuleError, match=rf"MatMul '{projection.name}': data input '{q.input[0]}' is not quantized"):
        check_qdq_model(model, residual_adds=False)
