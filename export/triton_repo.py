"""A Triton model repository for sites that serve engines from Triton (``config.pbtxt`` + model file).

Layout: ``REPO/MODEL/config.pbtxt`` and ``REPO/MODEL/1/model.onnx`` (plus
``model.onnx.data`` when the weights are external) or ``model.plan``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.errors import ExportError

_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "int64": "TYPE_INT64"}


def _tensor(entry: dict[str, Any], batched: bool) -> str:
    dims = list(entry["shape"])[1:] if batched else list(entry["shape"])
    shown = ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims)
    dtype = _TYPES.get(str(entry["dtype"]))
    if dtype is None:
        raise ExportError(f"tensor {entry['name']!r}: dtype {entry['dtype']!r} has no Triton type; known {sorted(_TYPES)}")
    return f'  {{\n    name: "{entry["name"]}"\n    data_type: {dtype}\n    dims: [ {shown} ]\n  }}'


def config_pbtxt(name: str, model_card: dict[str, Any], platform: str, max_batch_size: int) -> str:
    """Text of ``config.pbtxt``: inputs and outputs from the model card, dynamic batching when batched."""
    batched = max_batch_size > 0
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}"]
    lines.append("input [\n" + ",\n".join(_tensor(e, batched) for e in model_card["inputs"]) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor(e, batched) for e in model_card["outputs"]) + "\n]")
    if batched:
        lines.append("dynamic_batching {\n  max_queue_delay_microseconds: 2000\n}")
    lines.append("instance_group [\n  {\n    count: 1\n    kind: KIND_GPU\n  }\n]")
    return "\n".join(lines) + "\n"


def write_triton_model(
    repo: Path, name: str, model_files: Sequence[Path], model_card: dict[str, Any], max_batch_size: int = 64
) -> Path:
    """Write ``repo/name`` (replacing it); a model whose outputs do not share the batch axis gets max_batch_size 0."""
    primary = model_files[0]
    platform = {".onnx": "onnxruntime_onnx", ".plan": "tensorrt_plan"}.get(primary.suffix)
    if platform is None:
        raise ExportError(f"Triton serves .onnx or .plan models, got {primary.name!r}")
    outputs_batched = all(isinstance(e["shape"][0], str) for e in model_card["outputs"])
    model_dir = repo / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    for file in model_files:
        target = "model" + primary.suffix if file == primary else file.name  # external data keeps its name
        shutil.copyfile(file, model_dir / "1" / target)
    text = config_pbtxt(name, model_card, platform, max_batch_size if outputs_batched else 0)
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    return model_dir
