"""Runtime backends behind one small interface (:class:`Engine`).

:func:`load_engine` picks the backend the bundle's manifest names and imports
it lazily, so a machine without TensorRT can still run ONNX Runtime bundles
and fails clearly (:class:`~engines.errors.RuntimeMissing`) on a TensorRT one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.backends._base import Engine, InferenceError
from engines.backends._triton_pool import EndpointState, endpoint_states, parse_endpoint
from engines.manifest import Manifest

__all__ = ["EndpointState", "Engine", "InferenceError", "endpoint_states", "load_engine", "parse_endpoint"]


def load_engine(root: Path, manifest: Manifest, cpu_threads: int = 0, **options: Any) -> Engine:
    """Load a *verified* bundle directory on the backend its manifest names.

    Options: ``device`` ("auto" | "cpu" | "cuda" | "cuda:N") for ONNX Runtime and TensorRT;
    ``triton_endpoints`` (the site's pool, else the bundle's ``url``), ``triton_max_inflight`` and
    ``triton_timeout`` for Triton. Never call this on a bundle whose signature and hashes
    were not verified: a TensorRT plan is executable code.
    """
    name = manifest.backend_name
    if name == "onnxruntime":
        from engines.backends.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(root, manifest, cpu_threads=cpu_threads, device=options.get("device", "auto"))
    if name == "tensorrt":
        from engines.backends.tensorrt import TensorRTEngine

        return TensorRTEngine(root, manifest, device=options.get("device", "auto"))
    if name == "triton":
        from engines.backends.triton import TritonEngine

        return TritonEngine(
            root, manifest, endpoints=options.get("triton_endpoints", ()),
            max_inflight=options.get("triton_max_inflight", 4), timeout=options.get("triton_timeout", 30.0),
        )
    raise ValueError(f"unknown backend {name!r}")
