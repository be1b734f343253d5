"""ONNX Runtime backend: CPU execution provider (thread count from configuration), CUDA when present.

``device`` is the scheduling slot's device: ``"cpu"`` (CPU provider only, with
``cpu_threads`` intra-op threads), ``"cuda:N"`` (CUDA provider on device N,
an error when ONNX Runtime has no CUDA provider), ``"cuda"`` (device 0) or
``"auto"`` (CUDA device 0 when available, else the CPU).

Runs fp32, fp16 and explicit-quantization (Q/DQ) int8 ONNX graphs. The model is
loaded from its path so ONNX external data (``model.onnx.data`` beside it, a
file the manifest hashes) resolves. The model card's dtypes are the engine's
interface; when the graph's own inputs or outputs differ (an fp16 graph with
float16 I/O), values are cast at the boundary.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from engines.backends._base import Engine, InferenceError, cuda_device_id
from engines.errors import BundleRejected, RuntimeMissing
from engines.manifest import Manifest

__all__ = ["OnnxRuntimeEngine", "check_external_data"]

logger = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def check_external_data(root: Any, manifest: Manifest) -> None:
    """Every external-data location of the ONNX model must be a file of the (hashed) bundle."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(str(root / manifest.model_file), load_external_data=False)
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if location not in manifest.files:
            raise BundleRejected(
                f"bundle {manifest.key}: tensor {tensor.name!r} refers to external data {location!r}, "
                "which is not a file of the bundle"
            )


class OnnxRuntimeEngine(Engine):
    """An ONNX model in an ONNX Runtime session."""

    def __init__(self, root: Any, manifest: Manifest, cpu_threads: int = 0, device: str = "auto") -> None:
        super().__init__(root, manifest)
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissing(f"bundle {manifest.key} requires ONNX Runtime, which is not installed") from None
        if not _DEVICE.match(device):
            raise ValueError(f"device {device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        check_external_data(self.root, manifest)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, int(cpu_threads))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        available = ort.get_available_providers()
        providers: list[Any] = []
        if device != "cpu" and "CUDAExecutionProvider" in available:
            providers.append(("CUDAExecutionProvider", {"device_id": cuda_device_id(device)}))
        elif device.startswith("cuda"):
            raise RuntimeMissing(
                f"device {device!r} requested for {manifest.key} but ONNX Runtime has no CUDA provider ({available})"
            )
        providers.append("CPUExecutionProvider")
        self.device = device
        try:
            self.session = ort.InferenceSession(str(self.root / manifest.model_file), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleRejected(f"bundle {manifest.key}: ONNX Runtime cannot load {manifest.model_file!r}: {exc}") from None
        self.providers: list[str] = list(self.session.get_providers())
        self._input_types = {i.name: _ORT_TYPES.get(i.type) for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        card_in = {s.name for s in manifest.inputs}
        card_out = [s.name for s in manifest.outputs]
        if set(self._input_types) != card_in or not set(card_out) <= graph_outputs:
            raise BundleRejected(
                f"bundle {manifest.key}: the graph has inputs {sorted(self._input_types)} and outputs "
                f"{sorted(graph_outputs)}; the model card lists inputs {sorted(card_in)} and outputs {card_out}"
            )
        self._output_names = card_out
        logger.info("loaded %s on %s, device %s (%d intra-op threads)", manifest.key, ",".join(self.providers), device,
                    cpu_threads)

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for name, array in inputs.items():
            want = self._input_types.get(name)
            feed[name] = array.astype(want, copy=False) if want is not None else array
        try:
            values = self.session.run(self._output_names, feed)
        except Exception as exc:  # onnxruntime's own error types
            raise InferenceError(f"{self.manifest.key}: ONNX Runtime failed: {exc}") from None
        return dict(zip(self._output_names, values, strict=True))

    def _release(self) -> None:
        del self.session
