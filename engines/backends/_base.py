"""The one small interface every runtime backend implements.

An :class:`Engine` is loaded from a verified bundle directory, says which batch
sizes it accepts, runs ``infer`` on a dict of named arrays and releases its
resources on ``close``. Inputs are checked against the model card before they
reach the runtime, so a wrong shape or dtype is a clear error, not a crash
inside ONNX Runtime or TensorRT.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import numpy as np

from engines.errors import EngineError
from engines.manifest import Manifest, TensorSpec

__all__ = ["GPU_BACKENDS", "REMOTE_BACKENDS", "Engine", "InferenceError", "cuda_device_id"]

#: backends whose engines run on a remote server, not on a local device (the scheduler's remote slot)
REMOTE_BACKENDS: frozenset[str] = frozenset({"triton"})
#: backends that need a CUDA device (they cannot run on a ``cpu`` slot)
GPU_BACKENDS: frozenset[str] = frozenset({"tensorrt"})


class InferenceError(EngineError):
    """A batch does not match the model card, or the runtime failed on it."""


class Engine(ABC):
    """A loaded engine. Thread-safe: ``infer`` calls are serialised per engine unless ``thread_safe``."""

    #: the runtime bounds its own concurrency (a remote pool): ``infer`` is not serialised
    thread_safe = False

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = Path(root)
        self.manifest = manifest
        lo, hi = manifest.batch_sizes
        #: batch sizes accepted on the first dynamic dimension of the inputs
        self.batch_sizes: range = range(lo, hi + 1)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def backend(self) -> str:
        return self.manifest.backend_name

    @property
    def remote(self) -> bool:
        """True when the engine runs on a remote server; the scheduler then runs its jobs on the remote slot."""
        return self.backend in REMOTE_BACKENDS

    @property
    def capacity(self) -> int:
        """How many jobs may use this engine at once (a remote pool reports what its servers can take)."""
        return 1

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """Names, dtypes, ranks, fixed dimensions and batch size against the model card."""
        want = {s.name for s in self.manifest.inputs}
        if set(inputs) != want:
            raise InferenceError(f"{self.manifest.key}: inputs {sorted(inputs)} given, the model takes {sorted(want)}")
        sizes: dict[str, int] = {}
        for spec in self.manifest.inputs:
            array = inputs[spec.name]
            if not isinstance(array, np.ndarray):
                raise InferenceError(f"{self.manifest.key}: input {spec.name!r} is {type(array).__name__}, not ndarray")
            if array.dtype != np.dtype(spec.dtype):
                raise InferenceError(f"{self.manifest.key}: input {spec.name!r} is {array.dtype}, the model takes {spec.dtype}")
            _check_shape(self.manifest.key, spec, array.shape, sizes)
            if isinstance(spec.shape[0], str) and array.shape[0] not in self.batch_sizes:
                raise InferenceError(
                    f"{self.manifest.key}: batch of {array.shape[0]} on {spec.name!r}; "
                    f"accepted {self.batch_sizes.start}..{self.batch_sizes.stop - 1}"
                )

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every output of the model card in its card dtype."""
        if self._closed:
            raise InferenceError(f"{self.manifest.key}: engine is closed")
        self.check_inputs(inputs)
        if self.thread_safe:
            outputs = self._infer(inputs)
        else:
            with self._lock:
                outputs = self._infer(inputs)
        result = {}
        for spec in self.manifest.outputs:
            if spec.name not in outputs:
                raise InferenceError(f"{self.manifest.key}: runtime returned no output {spec.name!r}")
            result[spec.name] = np.asarray(outputs[spec.name]).astype(spec.dtype, copy=False)
        return result

    def infer_many(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """Results of ``batches`` in order; a backend that keeps several in flight (Triton) overrides it."""
        for inputs in batches:
            yield self.infer(inputs)

    @abstractmethod
    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the checked batch on the runtime."""

    def close(self) -> None:
        """Release the runtime's resources; idempotent."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:  # noqa: B027 - optional hook
        """Backend-specific release."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.manifest.key} {self.manifest.precision}>"


def cuda_device_id(device: str) -> int:
    """The CUDA ordinal of a device name: ``"cuda"`` and ``"auto"`` -> 0, ``"cuda:N"`` -> N."""
    if device in ("cuda", "auto"):
        return 0
    head, _, tail = device.partition(":")
    if head != "cuda" or not tail.isdigit():
        raise ValueError(f"device {device!r} is not a CUDA device; expected 'cuda' or 'cuda:N'")
    return int(tail)


def _check_shape(key: str, spec: TensorSpec, shape: tuple[int, ...], sizes: dict[str, int]) -> None:
    if len(shape) != len(spec.shape):
        raise InferenceError(f"{key}: input {spec.name!r} has shape {list(shape)}, the model takes {list(spec.shape)}")
    for got, want in zip(shape, spec.shape, strict=True):
        if isinstance(want, int) and got != want:
            raise InferenceError(f"{key}: input {spec.name!r} has shape {list(shape)}, the model takes {list(spec.shape)}")
        if isinstance(want, str):
            if sizes.setdefault(want, got) != got:
                raise InferenceError(f"{key}: dimension {want!r} is {sizes[want]} on one input and {got} on {spec.name!r}")
