"""FP16 mixed precision: fp16 where it is safe, fp32 where values are large or reductions accumulate.

Not a blind cast of every node: only ops in :data:`FP16_OPS` run in fp16; reductions,
normalizations, softmax and exponentials stay fp32, and so does any node whose
weights or (measured on sample inputs) outputs leave fp16's range. Graph inputs
and outputs stay fp32; Cast nodes are inserted where the precision changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError
from export.onnx_export import save_model

logger = logging.getLogger(__name__)

#: ops that are accurate in fp16 (elementwise, data movement, and matrix products that accumulate in fp32 on GPUs)
FP16_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "LeakyRelu", "Add", "Sub", "Mul", "Concat",
        "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Gather", "Slice", "MaxPool",
        "AveragePool", "Tanh", "Sigmoid", "Identity", "Split",
    }
)  # fmt: skip
#: largest magnitude kept in fp16 (fp16 max is 65504; leave head-room for accumulation)
FP16_LIMIT = 16384.0


def convert_fp16(
    fp32_path: Path,
    out_path: Path,
    sample: Sequence[Mapping[str, np.ndarray]] = (),
    keep_fp32: Sequence[str] = (),
    residual_fp32: bool = False,
) -> list[Path]:
    """Write the mixed-precision model of ``fp32_path`` to ``out_path``; return the files written.

    ``sample`` feeds (optional) measure activation ranges; nodes named in
    ``keep_fp32`` and nodes whose outputs exceed :data:`FP16_LIMIT` stay fp32.
    ``residual_fp32`` keeps every Add of two activations (a transformer's residual
    stream, which accumulates over the depth) in fp32 as well.
    """
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_path)), data_prop=True)
    graph = model.graph
    float_names = _float_tensors(model)
    large = _large_outputs(fp32_path, model, sample, float_names) if sample else set()
    fp16_nodes = _fp16_nodes(graph, float_names, large, keep_fp32, residual_fp32)
    if not fp16_nodes:
        raise ExportError(f"{fp32_path.name}: no node can run in fp16 (ops {sorted({n.op_type for n in graph.node})})")
    rewriter = _Rewriter(graph, float_names, fp16_nodes)
    for index, node in enumerate(rewriter.nodes):
        rewriter.rewrite(node, index in fp16_nodes)
    for out in graph.output:
        if out.name in rewriter.produced_fp16:
            rewriter.cast(out.name, TensorProto.FLOAT)
    _replace_nodes(graph, _toposort(rewriter.new_nodes, graph))
    _drop_unused_initializers(graph)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True)
    onnx.checker.check_model(model)
    logger.info(
        "fp16: %d of %d nodes in fp16, %d kept fp32 for range", len(fp16_nodes), len(graph.node) - len(rewriter.casts),
        len(large),
    )
    return save_model(model, out_path)


def _fp16_nodes(
    graph: onnx.GraphProto, float_names: set[str], large: set[str], keep_fp32: Sequence[str], residual_fp32: bool
) -> set[int]:
    """Indices of the nodes that run in fp16: an op of :data:`FP16_OPS`, not kept fp32, nothing out of range."""
    init = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)
    constants = set(init) | {n.output[0] for n in nodes if n.op_type == "Constant"}
    residual = {
        index for index, n in enumerate(nodes)
        if residual_fp32 and n.op_type == "Add" and not any(i in constants for i in n.input)
    }  # fmt: skip
    return {
        index
        for index, n in enumerate(nodes)
        if n.op_type in FP16_OPS
        and n.name not in keep_fp32
        and index not in residual
        and not (set(n.output) & large)
        and not any(_too_large(init[i]) for i in n.input if i in init and i in float_names)
    }


def _fp16_name(name: str) -> str:
    return name + "__fp16"


class _Rewriter:
    """Renames the tensors of fp16 nodes, converts their initializers and inserts Casts where precision changes."""

    def __init__(self, graph: onnx.GraphProto, float_names: set[str], fp16_nodes: set[int]) -> None:
        self.graph = graph
        self.float_names = float_names
        self.init = {t.name: t for t in graph.initializer}
        self.nodes = list(graph.node)
        self.produced_fp16 = {o for k in fp16_nodes for o in self.nodes[k].output if o in float_names}
        self.new_nodes: list[onnx.NodeProto] = []
        self.casts: dict[tuple[str, int], str] = {}
        self.converted_inits: dict[str, str] = {}

    def cast(self, name: str, to: int) -> str:
        """The name of ``name`` cast to ``to`` (one Cast node per tensor and type)."""
        key = (name, to)
        if key not in self.casts:
            source = _fp16_name(name) if to == TensorProto.FLOAT else name
            target = name if to == TensorProto.FLOAT else name + "__to_fp16"
            self.casts[key] = target
            self.new_nodes.append(helper.make_node("Cast", [source], [target], to=to, name=f"cast_{target}"))
        return self.casts[key]

    def rewrite(self, node: onnx.NodeProto, is16: bool) -> None:
        """Point ``node``'s float inputs (and, in fp16, outputs) at tensors of its precision; append it."""
        for i, name in enumerate(node.input):
            if name not in self.float_names:
                continue
            if is16:
                node.input[i] = self._fp16_input(name)
            elif name in self.produced_fp16:
                node.input[i] = self.cast(name, TensorProto.FLOAT)
        if is16:
            for i, name in enumerate(node.output):
                if name in self.float_names:
                    node.output[i] = _fp16_name(name)
        self.new_nodes.append(node)

    def _fp16_input(self, name: str) -> str:
        if name in self.init:
            if name not in self.converted_inits:
                self.converted_inits[name] = name + "__fp16init"
                array = numpy_helper.to_array(self.init[name]).astype(np.float16)
                self.graph.initializer.append(numpy_helper.from_array(array, self.converted_inits[name]))
            return self.converted_inits[name]
        if name in self.produced_fp16:
            return _fp16_name(name)
        return self.cast(name, TensorProto.FLOAT16)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    unused = {t.name for t in graph.initializer} - {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            names.add(vi.name)
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                    names.add(node.output[0])
    return names


def _too_large(tensor: onnx.TensorProto) -> bool:
    array = numpy_helper.to_array(tensor)
    return bool(array.size) and float(np.max(np.abs(array))) > FP16_LIMIT


def _large_outputs(
    path: Path, model: onnx.ModelProto, sample: Sequence[Mapping[str, np.ndarray]], float_names: set[str]
) -> set[str]:
    """Names of node outputs whose magnitude on the sample exceeds the fp16 limit."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    wanted = [o for n in probe.graph.node for o in n.output if o in float_names and o not in existing]
    for name in wanted:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    large: set[str] = set()
    for feed in sample:
        for name, value in zip(names, session.run(None, dict(feed)), strict=True):
            if value.size and float(np.max(np.abs(value))) > FP16_LIMIT:
                large.add(name)
    return large


def _toposort(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ExportError(f"fp16 conversion left a cycle or a dangling input near {pending[0].name!r}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    return ordered


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
