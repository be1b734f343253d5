"""Every int8 graph the export writes follows TensorRT's explicit-quantization rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.errors import QdqRuleError
from export.qdq_rules import WEIGHTED_OPS, check_qdq_model, weight_axis
from tests.export.conftest import Exported

pytestmark = pytest.mark.slow  # export training: the session's demo models, exported


def _int8_graphs(exported: Exported) -> list[Path]:
    graphs = sorted(exported.cache.rglob("*.onnx"))
    return [g for g in graphs if any(n.op_type == "QuantizeLinear" for n in onnx.load(str(g)).graph.node)]


def test_every_int8_graph_written_passes_the_rules(exported: Exported) -> None:
    graphs = _int8_graphs(exported)
    # the work copy and the bundle copy of each of the three tasks
    assert len(graphs) == 6, [str(g) for g in graphs]
    for path in graphs:
        summary = check_qdq_model(path)
        assert summary.weighted_ops > 0 and summary.quantize_nodes > 0


def test_int8_graphs_spelled_out(exported: Exported) -> None:
    """Zero points 0 (int8), scales > 0, weights per channel on axis 0 for Conv, biases float."""
    for path in _int8_graphs(exported):
        model = onnx.load(str(path))
        init = {t.name: t for t in model.graph.initializer}
        producer = {o: n for n in model.graph.node for o in n.output}
        for node in model.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                zero = init[node.input[2]]
                assert zero.data_type == onnx.TensorProto.INT8
                assert not numpy_helper.to_array(zero).any()
                assert (numpy_helper.to_array(init[node.input[1]]) > 0).all()
            if node.op_type in WEIGHTED_OPS:
                weight_dq = producer[node.input[1]]
                assert weight_dq.op_type == "DequantizeLinear"
                weight = numpy_helper.to_array(init[weight_dq.input[0]])
                scale = numpy_helper.to_array(init[weight_dq.input[1]])
                assert weight.dtype == np.int8 and scale.size == weight.shape[weight_axis(node)]
                if node.op_type == "Conv":
                    axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
                    assert axis == 0
                if len(node.input) > 2 and node.input[2]:
                    assert node.input[2] in init and init[node.input[2]].data_type == onnx.TensorProto.FLOAT
                assert producer[node.input[0]].op_type == "DequantizeLinear"


def test_asymmetric_default_quantization_is_rejected(exported: Exported, tmp_path: Path) -> None:
    """ONNX Runtime's defaults (uint8 asymmetric activations) are what TensorRT refuses."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    spec = exported.specs["pathology_tile"]
    fp32 = exported.cache / "work" / "pathology_tile" / "fp32" / "model.onnx"

    class Reader:
        def __init__(self) -> None:
            self.items = iter(spec.calibration[:2])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(str(fp32), str(tmp_path / "asym.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    with pytest.raises(QdqRuleError, match=r"zero point (type UINT8|must be 0)"):
        check_qdq_model(tmp_path / "asym.onnx")


def test_a_float_model_is_not_a_qdq_model(exported: Exported) -> None:
    with pytest.raises(QdqRuleError, match="no QuantizeLinear"):
        check_qdq_model(exported.cache / "work" / "pathology_tile" / "fp32" / "model.onnx")
