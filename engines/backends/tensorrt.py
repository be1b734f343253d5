"""TensorRT backend (TensorRT 10.x / 11.x Python API, pycuda for memory and streams).

Written against the documented name-based API: ``num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_profile_shape``,
``IExecutionContext.set_input_shape``, ``set_tensor_address`` and
``execute_async_v3`` on a pycuda stream; never binding indices.

A serialized plan is executable code and standard TensorRT has no validity
pre-check, so this module deserializes only a plan that (1) belongs to a bundle
whose signature and hashes were verified, (2) whose bytes, as read here, hash to
the manifest's sha256, and (3) whose compatibility record matches this machine
(:func:`engines.compat.check_compat`: TensorRT version, compute capability,
hardware-compatibility level, driver). Imports of ``tensorrt`` and ``pycuda``
happen inside the constructor, so importing this module never needs them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends._base import Engine, InferenceError, cuda_device_id
from engines.compat import check_compat
from engines.errors import BundleRejected, RuntimeMissing
from engines.manifest import Manifest

__all__ = ["TensorRTEngine"]

logger = logging.getLogger(__name__)


@dataclass
class _Buffer:
    """One I/O tensor: pinned host memory and device memory sized for the largest profile shape."""

    name: str
    dtype: np.dtype
    host: Any  # pycuda pagelocked ndarray (flat)
    device: Any  # pycuda DeviceAllocation


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


class TensorRTEngine(Engine):
    """A deserialized TensorRT plan with one execution context, one stream and preallocated buffers."""

    def __init__(self, root: Path, manifest: Manifest, device: str = "cuda:0") -> None:
        """Load the plan on CUDA ``device`` (``"cuda:N"``; ``"cuda"`` and ``"auto"`` mean device 0)."""
        super().__init__(root, manifest)
        if device == "cpu":
            raise RuntimeMissing(f"bundle {manifest.key} is a TensorRT plan and needs a CUDA device, not 'cpu'")
        self.device_id = cuda_device_id(device)
        check_compat(manifest)  # refuses before any deserialisation (RuntimeMissing / BundleRejected)
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise RuntimeMissing(f"bundle {manifest.key} requires TensorRT and pycuda: {exc}") from None
        self._cuda, self._trt = cuda, trt
        plan = (self.root / manifest.model_file).read_bytes()
        if hashlib.sha256(plan).hexdigest() != manifest.files[manifest.model_file]:
            raise BundleRejected(f"bundle {manifest.key}: plan bytes do not match the signed sha256; not deserialized")
        cuda.init()
        if self.device_id >= cuda.Device.count():
            raise RuntimeMissing(f"bundle {manifest.key}: CUDA device {self.device_id} requested, "
                                 f"{cuda.Device.count()} present")
        self._ctx = cuda.Device(self.device_id).retain_primary_context()
        self._ctx.push()
        try:
            self._load(plan)
        finally:
            self._ctx.pop()

    def _load(self, plan: bytes) -> None:
        cuda, trt, m = self._cuda, self._trt, self.manifest
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if m.backend.get("version_compatible"):
            self._runtime.engine_host_code_allowed = True  # version-compatible plans embed a lean runtime
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BundleRejected(f"bundle {m.key}: TensorRT could not deserialize {m.model_file!r}")
        need = int(m.backend.get("device_memory_size", 0) or 0)
        free, _total = cuda.mem_get_info()
        if need and need > free:
            raise BundleRejected(f"bundle {m.key} needs {need} bytes of GPU memory; {free} are free")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BundleRejected(f"bundle {m.key}: TensorRT could not create an execution context")
        self._stream = cuda.Stream()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        card_in, card_out = {s.name for s in m.inputs}, [s.name for s in m.outputs]
        if set(self._inputs) != card_in or not set(card_out) <= set(self._outputs):
            raise BundleRejected(
                f"bundle {m.key}: the plan has inputs {sorted(self._inputs)} and outputs {sorted(self._outputs)}; "
                f"the model card lists inputs {sorted(card_in)} and outputs {card_out}"
            )
        # size every buffer for the largest shape of optimisation profile 0
        for name in self._inputs:
            max_shape = tuple(self._engine.get_tensor_shape(name))
            if any(d < 0 for d in max_shape):  # dynamic: the profile's (min, opt, max)
                _min, _opt, max_shape = self._engine.get_tensor_profile_shape(name, 0)
            if not self._context.set_input_shape(name, tuple(max_shape)):
                raise BundleRejected(f"bundle {m.key}: profile max shape {tuple(max_shape)} of {name!r} is rejected")
        self._buffers: dict[str, _Buffer] = {}
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BundleRejected(
                    f"bundle {m.key}: output {name!r} has a data-dependent shape {shape}; not supported"
                )
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            host = cuda.pagelocked_empty(max(_volume(shape), 1), dtype)
            device = cuda.mem_alloc(host.nbytes)
            self._buffers[name] = _Buffer(name, dtype, host, device)
            self._context.set_tensor_address(name, int(device))
        logger.info("loaded TensorRT plan %s (TensorRT %s)", m.key, trt.__version__)

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        self._ctx.push()
        try:
            for name in self._inputs:
                buf, array = self._buffers[name], inputs[name]
                if array.size > buf.host.size:
                    raise InferenceError(f"{self.manifest.key}: input {name!r} {array.shape} exceeds the plan's profile")
                if not self._context.set_input_shape(name, array.shape):
                    raise InferenceError(f"{self.manifest.key}: TensorRT rejects shape {array.shape} for {name!r}")
                view = buf.host[: array.size]
                view[...] = array.astype(buf.dtype, copy=False).ravel()
                cuda.memcpy_htod_async(buf.device, view, self._stream)
                self._context.set_tensor_address(name, int(buf.device))
            shapes = {}
            for name in self._outputs:
                shapes[name] = tuple(self._context.get_tensor_shape(name))
                self._context.set_tensor_address(name, int(self._buffers[name].device))
            if not self._context.execute_async_v3(stream_handle=self._stream.handle):
                raise InferenceError(f"{self.manifest.key}: TensorRT execute_async_v3 failed")
            for name in self._outputs:
                buf = self._buffers[name]
                cuda.memcpy_dtoh_async(buf.host[: _volume(shapes[name])], buf.device, self._stream)
            self._stream.synchronize()
            return {n: buf.host[: _volume(shapes[n])].reshape(shapes[n]).copy()
                    for n, buf in ((n, self._buffers[n]) for n in self._outputs)}
        finally:
            self._ctx.pop()

    def _release(self) -> None:
        self._ctx.push()
        try:
            for buf in self._buffers.values():
                buf.device.free()
            self._buffers.clear()
            del self._context, self._engine, self._runtime
        finally:
            self._ctx.pop()
