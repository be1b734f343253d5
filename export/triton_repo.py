"""A Triton model repository for sites that serve engines from Triton (``config.pbtxt`` + model file).

Layout: ``REPO/MODEL/config.pbtxt`` and ``REPO/MODEL/1/model.onnx`` (plus
``model.onnx.data`` when the weights are external) or ``model.plan``. The
configuration is Triton's own ``ModelConfig`` protobuf (``tritonclient``
ships ``model_config_pb2``), printed with ``google.protobuf.text_format``:
inputs and outputs from the model card, dynamic batching with the card's
batch sizes as preferred sizes when the model is batched.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.cards import ModelCard
from engines.files import atomic_write
from export.errors import ExportError

__all__ = ["PLATFORMS", "TRITON_VERSION_SUFFIX", "config_pbtxt", "model_config", "write_triton_bundle",
           "write_triton_model"]

#: model file suffix -> Triton platform
PLATFORMS = {".onnx": "onnxruntime_onnx", ".plan": "tensorrt_plan"}
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
          "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
MAX_QUEUE_DELAY_MICROSECONDS = 2000
#: appended to the version of the bundle a Triton bundle is made from, so both can be installed side by side
TRITON_VERSION_SUFFIX = ".triton"


def _preferred(batch_sizes: Sequence[int], max_batch_size: int) -> list[int]:
    """Powers of two within the card's [min, max] batch range (and the max itself): what the batcher aims for."""
    lo, hi = int(batch_sizes[0]), min(int(batch_sizes[1]), max_batch_size)
    sizes = [1 << k for k in range(0, hi.bit_length()) if lo <= 1 << k <= hi]
    return sorted(set(sizes + [hi]))


def model_config(name: str, card: ModelCard, platform: str, max_batch_size: int,
                 batch_sizes: Sequence[int] = (1, 64), gpu: bool = True) -> Any:
    """The ``inference.ModelConfig`` message of one model (see the module docstring)."""
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size)
    batched = max_batch_size > 0
    for specs, add in ((card.inputs, config.input.add), (card.outputs, config.output.add)):
        for spec in specs:
            dtype = _TYPES.get(spec.dtype)
            if dtype is None:
                raise ExportError(f"tensor {spec.name!r}: dtype {spec.dtype!r} has no Triton type; known {sorted(_TYPES)}")
            dims = list(spec.shape)[1:] if batched else list(spec.shape)
            add(name=spec.name, data_type=pb.DataType.Value(dtype),
                dims=[d if isinstance(d, int) else -1 for d in dims])
    if batched:
        config.dynamic_batching.preferred_batch_size.extend(_preferred(batch_sizes, max_batch_size))
        config.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_MICROSECONDS
    kind = pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=1, kind=kind)
    return config


def config_pbtxt(name: str, card: ModelCard, platform: str, max_batch_size: int,
                 batch_sizes: Sequence[int] = (1, 64)) -> str:
    """Text of ``config.pbtxt`` (protobuf text format of :func:`model_config`)."""
    from google.protobuf import text_format

    return str(text_format.MessageToString(model_config(name, card, platform, max_batch_size, batch_sizes)))


def write_triton_model(
    repo: Path, name: str, model_files: Sequence[Path], card: ModelCard, max_batch_size: int = 64,
    batch_sizes: Sequence[int] = (1, 64),
) -> Path:
    """Write ``repo/name`` (replacing it); a model whose outputs do not share the batch axis gets max_batch_size 0."""
    primary = model_files[0]
    platform = PLATFORMS.get(primary.suffix)
    if platform is None:
        raise ExportError(f"Triton serves .onnx or .plan models, got {primary.name!r}")
    outputs_batched = all(isinstance(spec.shape[0], str) for spec in card.outputs)
    max_batch = min(max_batch_size, int(batch_sizes[1])) if outputs_batched else 0
    model_dir = repo / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    for file in model_files:
        target = "model" + primary.suffix if file == primary else file.name  # external data keeps its name
        shutil.copyfile(file, model_dir / "1" / target)
    text = config_pbtxt(name, card, platform, max_batch, batch_sizes)
    atomic_write(model_dir / "config.pbtxt", text.encode("utf-8"))
    return model_dir


def write_triton_bundle(bundle: Path, out_dir: Path, model_name: str, private_key_pem: bytes) -> Path:
    """A signed Triton bundle from an ONNX Runtime or TensorRT bundle: same card, files and golden set.

    The backend becomes ``{"name": "triton", "model_name": model_name}`` (the entry
    :func:`write_triton_model` made in the site's repository) and the version gains
    :data:`TRITON_VERSION_SUFFIX`. The model file stays in the bundle: it is what the
    site deploys, and the hashes tie the served model to the signed one.
    """
    from engines.bundle import write_bundle
    from engines.manifest import MANIFEST_NAME, Manifest, parse_manifest_bytes

    manifest = Manifest.from_dict(parse_manifest_bytes((bundle / MANIFEST_NAME).read_bytes()))
    fields = {k: v for k, v in manifest.raw.items() if k not in ("format", "files")}
    fields["backend"] = {"name": "triton", "model_name": model_name}
    fields["version"] = manifest.version + TRITON_VERSION_SUFFIX
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return write_bundle(out_dir, fields, {name: bundle / name for name in manifest.files}, private_key_pem)
