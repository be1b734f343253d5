"""PyTorch to ONNX with the dynamo exporter: dynamic batch/bag axes, checker, shape inference, parity.

The dynamo exporter may write weights as external data (``model.onnx.data`` beside
``model.onnx``); every function here takes the ``.onnx`` path and lets onnx and ONNX
Runtime resolve the data file from the same directory, and :func:`model_files`
lists both so bundles hash and ship them together.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from engines.files import replace_durably
from export.errors import ExportError, ParityError

logger = logging.getLogger(__name__)

#: the largest fp32 max-abs difference between ONNX Runtime and PyTorch the export accepts
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportedModel:
    """An exported ONNX model and how it was checked."""

    path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    parity_max_abs: float  #: fp32 max abs difference against PyTorch on the sample inputs
    opset: int


def model_files(path: Path) -> list[Path]:
    """The ONNX file and its external-data files (they must travel together)."""
    files = [path]
    model = onnx.load(str(path), load_external_data=False)
    seen: set[str] = set()
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in seen:
                    seen.add(entry.value)
                    files.append(path.parent / entry.value)
    return files


def _all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append(attr.t)
    return tensors


def save_model(model: onnx.ModelProto, path: Path, external_data: bool | None = None) -> list[Path]:
    """Write ``model`` atomically (temporary names, fsync, rename); external data above 1.5 GB or when asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model.ByteSize() > 1_500_000_000
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-onnx-") as tmp:
        tmp_path = Path(tmp) / path.name
        if external_data:
            onnx.save_model(model, str(tmp_path), save_as_external_data=True, location=data_name, size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp_path))
        written = [tmp_path] + ([Path(tmp) / data_name] if (Path(tmp) / data_name).exists() else [])
        stale = path.parent / data_name
        if not external_data and stale.exists():
            stale.unlink()
        for file in reversed(written):  # data first, so the .onnx never points at a missing file
            replace_durably(file, path.parent / file.name)
    return model_files(path)


def _move_external(raw: Path, data: Path, path: Path) -> None:
    """Point ``raw``'s external tensors at ``<path>.data`` and move both files there (data first, fsync'd)."""
    model = onnx.load(str(raw), load_external_data=False)
    target = path.name + ".data"
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = target
    graph = raw.with_name("graph.onnx")
    onnx.save_model(model, str(graph))
    replace_durably(data, path.parent / target)  # data first, so the .onnx never points at a missing file
    replace_durably(graph, path)


def check_and_infer(path: Path) -> onnx.ModelProto:
    """Run ``onnx.checker`` (by path, so external data is resolved) and strict shape inference."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {exc}") from exc
    model = onnx.load(str(path))
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def export_onnx(
    module: torch.nn.Module,
    sample: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    path: Path,
    opset: int = 18,
    tolerance: float = PARITY_TOLERANCE,
    external_data: bool | None = None,
) -> ExportedModel:
    """Export ``module`` (eval mode) with ``torch.onnx.export(..., dynamo=True)`` and check it.

    ``dynamic_axes`` maps an input name to {axis: dimension name}; the same name on
    several inputs is one shared dimension. Parity is measured on ``sample`` and on a
    second batch size, so a dimension the exporter specialized is caught.
    ``external_data`` (default: when the weights pass 1.5 GB) keeps the weights in
    ``model.onnx.data``: the exporter's data file is moved, never loaded, so a large
    encoder's weights are not held a second time beside the PyTorch module.
    """
    module = module.eval()
    names = list(sample)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        _dynamo_export(module, sample, output_names, dynamic_axes, opset, raw)
        data = raw.with_name(raw.name + ".data")
        if external_data is None:
            external_data = data.exists() and data.stat().st_size > 1_500_000_000
        if external_data and data.exists():
            _move_external(raw, data, path)
        else:
            save_model(onnx.load(str(raw)), path)  # loads the external data into the one .onnx file
    inferred = check_and_infer(path)
    del inferred
    worst = max(
        parity(module, path, sample),
        parity(module, path, {n: _other_batch(t, dynamic_axes.get(n, {})) for n, t in sample.items()}),
    )
    logger.info("exported %s to %s: parity max abs %.3g (tolerance %.1g)", type(module).__name__, path.name, worst, tolerance)
    if not worst <= tolerance:
        raise ParityError(f"{path.name}: ONNX Runtime differs from PyTorch by {worst:.3g}, tolerance {tolerance:.1g}")
    return ExportedModel(path, tuple(names), tuple(output_names), worst, opset)


def _dynamo_export(
    module: torch.nn.Module,
    sample: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int,
    raw: Path,
) -> None:
    """``torch.onnx.export(..., dynamo=True)`` of ``module`` to ``raw`` (weights in ``raw.onnx.data``)."""
    names = list(sample)
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = {
        name: {axis: dims.setdefault(dim, torch.export.Dim(dim, min=1, max=4096)) for axis, dim in axes.items()}
        for name, axes in dynamic_axes.items()
    }
    try:
        program = torch.onnx.export(
            module,
            args=(),
            kwargs=dict(sample),
            f=None,
            input_names=names,
            output_names=list(output_names),
            dynamic_shapes={n: dynamic_shapes.get(n) for n in names},
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verify=False,
            report=False,
            verbose=False,
        )
    except Exception as exc:  # the exporter raises many types; name the model and keep the cause
        raise ExportError(f"torch.onnx.export (dynamo) failed for {type(module).__name__}: {exc}") from exc
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program for {type(module).__name__}")
    program.save(str(raw), external_data=True)  # the exporter's default: weights in raw.onnx.data
    del program


def _other_batch(tensor: torch.Tensor, axes: Mapping[int, str]) -> torch.Tensor:
    """The sample with its dynamic axes grown by one (repeat the first element)."""
    for axis in axes:
        tensor = torch.cat([tensor, tensor.narrow(axis, 0, 1)], dim=axis)
    return tensor


def run_onnx(path: Path, inputs: Mapping[str, np.ndarray], threads: int = 2) -> list[np.ndarray]:
    """Run a model with ONNX Runtime on the CPU (external data is read from the model's directory)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [np.asarray(x) for x in session.run(None, dict(inputs))]


def parity(module: torch.nn.Module, path: Path, sample: Mapping[str, torch.Tensor]) -> float:
    """Max abs difference between PyTorch and ONNX Runtime over every output."""
    with torch.no_grad():
        expected = module(**sample)
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    got = run_onnx(path, {k: v.numpy() for k, v in sample.items()})
    if len(got) != len(expected):
        raise ParityError(f"{path.name} has {len(got)} outputs, PyTorch gives {len(expected)}")
    worst = 0.0
    for ref, out in zip(expected, got, strict=True):
        if tuple(ref.shape) != out.shape:
            raise ParityError(f"{path.name}: output shape {out.shape} differs from PyTorch {tuple(ref.shape)}")
        worst = max(worst, float(np.max(np.abs(ref.numpy() - out))) if out.size else 0.0)
    return worst


def optimize_for_ort_cpu(
    fp32_path: Path, out_path: Path, num_heads: int, hidden_size: int,
    sample: Sequence[Mapping[str, np.ndarray]], tolerance: float = PARITY_TOLERANCE,
) -> list[Path]:
    """ONNX Runtime's transformer fusions (attention, SkipLayerNorm, BiasGelu) for the CPU bundle, parity-checked.

    The result uses ONNX Runtime's contrib ops, so it is for the ``onnxruntime``
    backend only; TensorRT builds take the plain fp32 / fp16 / Q/DQ graphs. Raise
    ParityError when the fused model differs from the plain one by more than ``tolerance``.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(fp32_path), model_type="vit", num_heads=num_heads, hidden_size=hidden_size, opt_level=0)
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    files = save_model(optimized.model, out_path)
    del optimized
    worst = 0.0
    for feed in sample:
        for a, b in zip(run_onnx(fp32_path, feed), run_onnx(out_path, feed), strict=True):
            worst = max(worst, float(np.max(np.abs(a - b))) if a.size else 0.0)
    logger.info("ONNX Runtime transformer fusions %s: max abs difference %.3g", fused, worst)
    if not worst <= tolerance:
        raise ParityError(f"{out_path.name}: the fused model differs from the plain one by {worst:.3g}, tolerance {tolerance:.1g}")
    return files
