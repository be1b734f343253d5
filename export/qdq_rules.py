"""Check a Q/DQ ONNX graph against what TensorRT's explicit quantization needs.

TensorRT cannot be installed here, so the rules are checked on the ONNX graph:

- every QuantizeLinear / DequantizeLinear is signed int8 with zero point 0 and scale > 0;
- activations are quantized per tensor (scalar scale);
- weights are quantized per channel on the output-channel axis (0 for Conv 2-D and
  3-D and for Gemm with transB=1; 1 for MatMul and Gemm without transB);
- the data and weight inputs of every weighted op (Conv, Gemm, MatMul) and both
  inputs of every residual Add come from a DequantizeLinear;
- biases are not quantized, and the output of a weighted op is not quantized
  unless it feeds a residual Add directly.

Transformer patterns (``residual_adds=False``: a transformer's residual stream stays
in float, TensorRT fuses the adds into the preceding GEMM's epilogue):

- an attention MatMul (Q @ K^T, softmax @ V: two activations, no constant weight)
  has both inputs quantized per tensor, or neither (then TensorRT runs it in
  fp16/fp32; one quantized input alone is a wasted, precision-losing Q/DQ);
- likewise a projection (MatMul/Gemm with a constant weight) is quantized on both
  inputs or kept in float as a whole (a sensitive layer, e.g. the first block's qkv);
- LayerNormalization, Softmax and GELU (``Erf`` / ``Gelu`` and ONNX Runtime's fused
  forms) take a float input: a DequantizeLinear in front of them would round the
  tensor to int8 for an op TensorRT runs in float anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.errors import QdqRuleError

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
#: ops TensorRT runs in float: their input must not come straight from a DequantizeLinear
FLOAT_ONLY_OPS = (
    "LayerNormalization", "Softmax", "Erf", "Gelu", "SkipLayerNormalization", "BiasGelu", "FastGelu",
)  # fmt: skip


@dataclass(frozen=True)
class QdqSummary:
    """What the checker saw."""

    quantize_nodes: int
    dequantize_nodes: int
    weighted_ops: int
    residual_adds: int
    attention_matmuls: int = 0
    float_only_ops: int = 0
    float_weighted_ops: int = 0  #: projections kept in float as a whole (transformers only)


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.init = {t.name: t for t in model.graph.initializer}
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        for node in model.graph.node:  # constants folded into Constant nodes count as initializers
            if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
                self.init[node.output[0]] = node.attribute[0].t

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.init.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def is_constant(self, name: str) -> bool:
        return name in self.init


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(onnx.helper.get_attribute_value(attr))
    return default


def weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a weighted op's weight input."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return 1  # MatMul: [K, N]


def check_qdq_model(model: onnx.ModelProto | Path, residual_adds: bool = True) -> QdqSummary:
    """Raise QdqRuleError listing every rule the graph breaks; return a summary when it passes.

    ``residual_adds`` requires both inputs of residual Adds quantized (CNNs); a
    transformer's residual stream stays float (``False``).
    """
    if isinstance(model, Path):
        model = onnx.load(str(model))
    g = _Graph(model)
    problems: list[str] = []
    q_nodes = [n for n in g.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not q_nodes:
        raise QdqRuleError(f"graph {g.graph.name!r} has no QuantizeLinear/DequantizeLinear nodes: not a Q/DQ model")
    for node in q_nodes:
        problems.extend(_check_scale_zero_point(g, node))
    weighted = [n for n in g.graph.node if n.op_type in WEIGHTED_OPS and not _is_attention(g, n)]
    kept_float = [] if residual_adds else [n for n in weighted if not any(_from_dq(g, name) for name in n.input[:2])]
    for node in weighted:
        if node.name not in {n.name for n in kept_float}:
            problems.extend(_check_weighted(g, node))
    attention = [n for n in g.graph.node if n.op_type == "MatMul" and _is_attention(g, n)]
    for node in attention:
        problems.extend(_check_attention(g, node))
    float_only = [n for n in g.graph.node if n.op_type in FLOAT_ONLY_OPS]
    for node in float_only:
        if node.input and _from_dq(g, node.input[0]) is not None:
            problems.append(
                f"{node.op_type} {node.name!r}: input {node.input[0]!r} is dequantized; TensorRT runs it in float, "
                "so quantizing its input only loses precision"
            )
    adds = [n for n in g.graph.node if n.op_type == "Add" and _is_residual(g, n)] if residual_adds else []
    for node in adds:
        for name in node.input:
            if not _from_dq(g, name):
                problems.append(f"residual Add {node.name!r}: input {name!r} is not quantized (no DequantizeLinear)")
    if problems:
        raise QdqRuleError(f"{len(problems)} Q/DQ rule(s) TensorRT needs are broken:\n  " + "\n  ".join(problems))
    return QdqSummary(
        quantize_nodes=sum(n.op_type == "QuantizeLinear" for n in q_nodes),
        dequantize_nodes=sum(n.op_type == "DequantizeLinear" for n in q_nodes),
        weighted_ops=len(weighted) - len(kept_float),
        residual_adds=len(adds),
        attention_matmuls=len(attention),
        float_only_ops=len(float_only),
        float_weighted_ops=len(kept_float),
    )


def _is_attention(g: _Graph, node: onnx.NodeProto) -> bool:
    """A MatMul of two activations (Q @ K^T or probabilities @ V): neither input is a constant weight."""
    return node.op_type == "MatMul" and not any(g.is_constant(_through_dq(g, name)) for name in node.input[:2])


def _check_attention(g: _Graph, node: onnx.NodeProto) -> list[str]:
    problems: list[str] = []
    if not any(_from_dq(g, name) for name in node.input[:2]):
        return problems  # kept in float as a whole
    for role, name in zip(("left", "right"), node.input[:2], strict=True):
        dq = _from_dq(g, name)
        if dq is None:
            problems.append(
                f"attention MatMul {node.name!r}: {role} input {name!r} is not quantized but the other is "
                "(quantize both or neither)"
            )
            continue
        scale = g.array(dq.input[1])
        if scale is not None and scale.size != 1:
            problems.append(f"attention MatMul {node.name!r}: {role} input {name!r} must be quantized per tensor")
    return problems


def _check_scale_zero_point(g: _Graph, node: onnx.NodeProto) -> list[str]:
    problems = []
    where = f"{node.op_type} {node.name!r}"
    scale = g.array(node.input[1])
    if scale is None:
        problems.append(f"{where}: scale {node.input[1]!r} is not a constant")
    elif not np.all(scale > 0) or not np.all(np.isfinite(scale)):
        problems.append(f"{where}: scale must be finite and > 0, got min {float(np.min(scale)):.3g}")
    if len(node.input) < 3 or not node.input[2]:
        problems.append(f"{where}: no zero point, so the type defaults to uint8; TensorRT needs int8 with zero point 0")
        return problems
    zero = g.init.get(node.input[2])
    if zero is None:
        problems.append(f"{where}: zero point {node.input[2]!r} is not a constant")
    else:
        if zero.data_type != onnx.TensorProto.INT8:
            problems.append(
                f"{where}: zero point type {onnx.TensorProto.DataType.Name(zero.data_type)}, TensorRT needs INT8"
            )
        if np.any(numpy_helper.to_array(zero) != 0):
            problems.append(f"{where}: zero point must be 0 (symmetric), got {numpy_helper.to_array(zero).tolist()}")
    return problems


def _from_dq(g: _Graph, name: str) -> onnx.NodeProto | None:
    producer = g.producer.get(name)
    return producer if producer is not None and producer.op_type == "DequantizeLinear" else None


def _check_weighted(g: _Graph, node: onnx.NodeProto) -> list[str]:
    where = f"{node.op_type} {node.name!r}"
    problems = []
    data_dq = _from_dq(g, node.input[0])
    if data_dq is None:
        problems.append(f"{where}: data input {node.input[0]!r} is not quantized")
    elif g.array(data_dq.input[1]) is not None and g.array(data_dq.input[1]).size != 1:  # type: ignore[union-attr]
        problems.append(f"{where}: activation {node.input[0]!r} must be quantized per tensor, not per channel")
    weight_dq = _from_dq(g, node.input[1])
    if weight_dq is None:
        problems.append(f"{where}: weight input {node.input[1]!r} is not quantized")
    else:
        weight = g.array(weight_dq.input[0])
        scale = g.array(weight_dq.input[1])
        if weight is None:
            problems.append(f"{where}: weight {weight_dq.input[0]!r} is not a constant int8 tensor")
        elif weight.dtype != np.int8:
            problems.append(f"{where}: weight stored as {weight.dtype}, TensorRT needs int8")
        axis = weight_axis(node)
        if weight is not None and scale is not None:
            if scale.size != weight.shape[axis]:
                problems.append(
                    f"{where}: weight scale has {scale.size} values, per-channel on axis {axis} needs {weight.shape[axis]}"
                )
            elif scale.size > 1 and _attr(weight_dq, "axis", 1) % weight.ndim != axis:
                problems.append(f"{where}: weight quantized on axis {_attr(weight_dq, 'axis', 1)}, must be {axis}")
    bias_index = 2
    if len(node.input) > bias_index and node.input[bias_index]:
        bias = node.input[bias_index]
        if _from_dq(g, bias) is not None or not g.is_constant(bias):
            problems.append(f"{where}: bias {bias!r} must be a float constant, not quantized")
    for out in node.output:
        for consumer in g.consumers.get(out, []):
            if consumer.op_type == "QuantizeLinear" and not any(
                c.op_type == "Add" and _is_residual(g, c)
                for dq in g.consumers.get(consumer.output[0], [])
                for c in g.consumers.get(dq.output[0], [])
            ):
                problems.append(f"{where}: output {out!r} is quantized; TensorRT fuses it, quantize consumers' inputs")
    return problems


def _is_residual(g: _Graph, node: onnx.NodeProto) -> bool:
    """An Add of two activations (not a bias add of a constant)."""
    return len(node.input) == 2 and not any(g.is_constant(_through_dq(g, name)) for name in node.input)


def _through_dq(g: _Graph, name: str) -> str:
    dq = _from_dq(g, name)
    if dq is None:
        return name
    q = g.producer.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else dq.input[0]
