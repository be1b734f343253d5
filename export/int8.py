"""INT8 by explicit quantization: a Q/DQ ONNX graph that ONNX Runtime runs and TensorRT builds.

ONNX Runtime's ``quant_pre_process`` (shape inference, graph clean-up) runs first;
then ``quantize_static`` in QDQ format with the settings TensorRT needs: signed
int8 activations and weights, symmetric (zero point 0), per-channel weights on the
output-channel axis, a dedicated Q/DQ pair per consumer, and biases left in float.
Calibration uses entropy or percentile ranges on real preprocessed inputs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from export.errors import ExportError
from export.onnx_export import model_files, save_model

logger = logging.getLogger(__name__)

CalibrationMethodName = Literal["entropy", "percentile", "minmax"]

#: ops whose inputs are quantized (TensorRT: weighted ops and residual adds); their outputs are not
TENSORRT_OP_TYPES = ("Conv", "Gemm", "MatMul", "Add")
#: a transformer's Q/DQ: the inputs of every MatMul/Gemm (projections and attention); residual stream in float
TRANSFORMER_OP_TYPES = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Int8Settings:
    """How the Q/DQ graph is made."""

    method: CalibrationMethodName = "percentile"
    percentile: float = 99.999  #: for ``percentile`` calibration
    op_types: tuple[str, ...] = TENSORRT_OP_TYPES
    exclude_nodes: tuple[str, ...] = ()  #: node names kept in float (sensitive layers)
    quantize_outputs_of: tuple[str, ...] = ()  #: op types whose outputs also get Q/DQ (none for TensorRT)
    max_batch: int = 0  #: > 0: calibration batches are cut to this many items (bounds a large model's memory)
    #: keep attention's probabilities @ V MatMul in float: softmax outputs in symmetric int8 lose the small
    #: probabilities (demo-trained ViT-S/16: embedding cosine 0.977 -> 0.992 with it); TensorRT runs it in fp16
    float_attention_values: bool = False
    #: keep the first block's projections of the first LayerNorm's output (qkv) in float: int8 rounding of that
    #: tensor loses what tells near-uniform (background-heavy) tiles' patch tokens apart, and their embeddings turn away
    #: (demo-trained ViT-S/16, 256 tiles: cosine p1 0.797 -> 0.999, mean 0.992 -> 0.999; bench/encoders.py)
    float_first_block_input: bool = False


#: a ViT tile encoder's int8 (export and bench): Q/DQ on the MatMul inputs but attention's probabilities @ V and
#: the first block's qkv, percentile 99.999 calibration, calibration batches of 4 tiles
TRANSFORMER_INT8 = Int8Settings(
    op_types=TRANSFORMER_OP_TYPES, max_batch=4, float_attention_values=True, float_first_block_input=True
)


def equal_batches(feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Re-chunk feeds whose leading (batch or bag) axis differs into equal chunks.

    ONNX Runtime's histogram calibrators stack every batch's tensors, so the shapes
    must agree; concatenating along the leading axis and splitting again keeps every
    sample (a bag of tiles stays a bag of the same tiles' embeddings).
    """
    dicts = [dict(f) for f in feeds]
    if len({tuple(v.shape for v in f.values()) for f in dicts}) <= 1:
        return dicts
    size = min(next(iter(f.values())).shape[0] for f in dicts)
    joined = {k: np.concatenate([f[k] for f in dicts]) for k in dicts[0]}
    total = next(iter(joined.values())).shape[0]
    return [{k: v[i : i + size] for k, v in joined.items()} for i in range(0, total - size + 1, size)]


class _Reader:
    """A CalibrationDataReader over a list of feed dicts; ``progress(done, total)`` after each batch handed out."""

    def __init__(
        self, batches: Sequence[Mapping[str, np.ndarray]], progress: Callable[[int, int], None] | None = None,
        max_batch: int = 0,
    ) -> None:
        self._batches = equal_batches(batches)
        if max_batch > 0:
            self._batches = [
                {k: v[i : i + max_batch] for k, v in b.items()}
                for b in self._batches for i in range(0, len(next(iter(b.values()))), max_batch)
            ]  # fmt: skip
        self._iter: Iterator[Mapping[str, np.ndarray]] = iter(self._batches)
        self._progress = progress
        self._done = 0

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        """ONNX Runtime's strided calibration: hand out only these batches (then their activations are released)."""
        self._iter = iter(self._batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        if batch is not None and self._progress is not None:
            self._done += 1
            self._progress(self._done, len(self._batches))
        return None if batch is None else {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in batch.items()}

    def rewind(self) -> None:
        self._iter = iter(self._batches)
        self._done = 0


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: Sequence[Mapping[str, np.ndarray]],
    settings: Int8Settings = Int8Settings(),
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write the Q/DQ int8 model of ``fp32_path`` to ``out_path``; return the files written.

    ``calibration`` is a list of input feeds produced by the appliance's own
    preprocessing (the same normalization the pipelines apply).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ExportError("INT8 calibration needs at least one input batch, got none")
    methods = {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }
    if settings.method not in methods:
        raise ExportError(f"calibration method {settings.method!r} is not one of {sorted(methods)}")
    extra_options = _extra_options(fp32_path, settings)
    excluded = _float_nodes(fp32_path, settings)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".tmp-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "quantized.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False, auto_merge=True)
        except Exception as exc:  # ORT's symbolic shape inference lacks some opset-18 ops; ONNX's suffices
            logger.info("symbolic shape inference failed (%s); pre-processing with ONNX shape inference only", exc)
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            _Reader(calibration, progress, settings.max_batch),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=methods[settings.method],
            extra_options=extra_options,
        )
        model = onnx.load(str(quantized))
    files = save_model(model, out_path)
    logger.info(
        "quantized %s to %s (%s calibration, %d batches)", fp32_path.name, out_path.name, settings.method, len(calibration)
    )
    return files


def _extra_options(fp32_path: Path, settings: Int8Settings) -> dict[str, object]:
    """ONNX Runtime's quantizer options: symmetric, per-channel weights, Q/DQ only where TensorRT wants them."""
    excluded_outputs = sorted(
        {n.op_type for n in onnx.load(str(fp32_path), load_external_data=False).graph.node}
        - set(settings.quantize_outputs_of)
    )
    extra_options: dict[str, object] = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "DedicatedQDQPair": True,
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": excluded_outputs,
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "MatMul": 1},
        "CalibTensorRangeSymmetric": True,
        # one batch at a time: histograms merge batch by batch instead of holding every batch's activations
        # (a ViT-L's intermediate tensors are ~250 MB per tile)
        "CalibStridedMinMax": 1,
    }
    if settings.method == "percentile":
        extra_options["CalibPercentile"] = settings.percentile
    return extra_options


def _float_nodes(fp32_path: Path, settings: Int8Settings) -> list[str]:
    """The nodes kept in float: the settings' own, attention values and the first block's qkv when asked."""
    excluded = list(settings.exclude_nodes)
    excluded += _attention_value_matmuls(fp32_path) if settings.float_attention_values else []
    excluded += _first_block_matmuls(fp32_path) if settings.float_first_block_input else []
    return excluded


def _attention_value_matmuls(path: Path) -> list[str]:
    """Names of the MatMuls whose left input is a Softmax output (attention probabilities @ V)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    softmax = {o for n in graph.node if n.op_type == "Softmax" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[0] in softmax]


def _first_block_matmuls(path: Path) -> list[str]:
    """Names of the weighted MatMuls/Gemms reading the first LayerNormalization's output (block 0's qkv)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    norm = next((n for n in graph.node if n.op_type == "LayerNormalization"), None)
    if norm is None:
        raise ExportError(f"{path.name}: float_first_block_input needs a LayerNormalization node, the graph has none")
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    names = [
        n.name for n in graph.node
        if n.op_type in ("MatMul", "Gemm") and n.input[0] == norm.output[0] and n.input[1] in constants
    ]  # fmt: skip
    if not names:
        raise ExportError(f"{path.name}: no weighted MatMul reads the first LayerNormalization {norm.name!r}")
    return names


__all__ = ["Int8Settings", "TENSORRT_OP_TYPES", "TRANSFORMER_INT8", "TRANSFORMER_OP_TYPES", "model_files", "quantize_int8"]
