"""The compatibility record of a bundle against this machine, checked before anything loads.

``manifest.backend`` says what the bundle needs:

- ``onnxruntime``: ``min_version`` (optional) of the onnxruntime package.
- ``tensorrt``: ``trt_version`` (the full version the plan was built with, e.g.
  ``"10.3.0.26"``), ``compute_capability`` (``"8.9"``), ``hardware_compatibility``
  (``"none"``, ``"ampere_plus"`` or ``"same_compute_capability"``),
  ``version_compatible`` (plan built version-compatible: any runtime of the same
  major, at least as new), ``lean_runtime``, ``cuda_major``, ``min_driver``
  (CUDA driver API version, e.g. 12040), ``gpu_name``, ``device_memory_size``,
  ``profiles``. A plan is executable code and standard TensorRT has no validity
  pre-check, so every mismatch is refused here, before deserialisation.
- ``triton``: ``model_name`` (and ``model_version``) on the site's Triton endpoints, or on the
  bundle's own ``url`` when the configuration names none.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from engines.errors import BundleRejected, RuntimeMissing
from engines.manifest import Manifest

__all__ = ["GpuInfo", "check_compat", "gpu_info", "parse_version", "runtime_version"]

HW_COMPAT_LEVELS = ("none", "ampere_plus", "same_compute_capability")
_RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "triton": "tritonclient"}


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; trailing labels (``"1.20.1+cu12"``) are ignored."""
    parts = []
    for piece in str(text).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    if not parts:
        raise BundleRejected(f"version {text!r} has no numeric part")
    return tuple(parts)


def runtime_version(backend: str) -> str | None:
    """The installed version of a backend's runtime package, or None when it is absent."""
    module_name = _RUNTIME_MODULES.get(backend)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", "0"))


@dataclass(frozen=True)
class GpuInfo:
    """The first CUDA device, as pycuda reports it."""

    name: str
    compute_capability: tuple[int, int]
    driver_version: int


def gpu_info() -> GpuInfo | None:
    """Device 0 via pycuda, or None when pycuda or a CUDA device is absent."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            return None
        dev = cuda.Device(0)
        return GpuInfo(str(dev.name()), tuple(dev.compute_capability()), int(cuda.get_driver_version()))  # type: ignore[arg-type]
    except cuda.Error:
        return None


def _cc(text: Any, key: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\.(\d+)", str(text))
    if not match:
        raise BundleRejected(f"{key}: compute_capability {text!r} must look like '8.9'")
    return int(match.group(1)), int(match.group(2))


def _check_onnxruntime(manifest: Manifest) -> None:
    have = runtime_version("onnxruntime")
    if have is None:
        raise RuntimeMissing(f"bundle {manifest.key} requires ONNX Runtime, which is not installed on this machine")
    need = manifest.backend.get("min_version")
    if need and parse_version(have) < parse_version(need):
        raise BundleRejected(f"bundle {manifest.key} requires ONNX Runtime >= {need}; this machine has {have}")


def _check_tensorrt(manifest: Manifest) -> None:
    b, key = manifest.backend, manifest.key
    need = b.get("trt_version")
    if not need:
        raise BundleRejected(f"bundle {key}: a TensorRT bundle must record trt_version")
    have = runtime_version("tensorrt")
    if have is None:
        raise RuntimeMissing(
            f"bundle {key} requires TensorRT {need}, which is not installed on this machine (no 'tensorrt' module)"
        )
    if b.get("version_compatible"):
        if parse_version(have)[0] != parse_version(need)[0] or parse_version(have) < parse_version(need):
            raise BundleRejected(
                f"bundle {key} is a version-compatible TensorRT {need} plan; this machine's TensorRT {have} "
                "must have the same major version and be at least as new"
            )
    elif parse_version(have) != parse_version(need):
        raise BundleRejected(f"bundle {key} was built with TensorRT {need}; this machine has TensorRT {have}")
    level = b.get("hardware_compatibility", "none")
    if level not in HW_COMPAT_LEVELS:
        raise BundleRejected(f"bundle {key}: hardware_compatibility {level!r} is not one of {', '.join(HW_COMPAT_LEVELS)}")
    built_cc = _cc(b.get("compute_capability"), key)
    gpu = gpu_info()
    if gpu is None:
        raise RuntimeMissing(f"bundle {key} requires a CUDA GPU and pycuda; neither a device nor pycuda was found")
    ok = gpu.compute_capability >= (8, 0) if level == "ampere_plus" else gpu.compute_capability == built_cc
    if not ok:
        shown = ".".join(map(str, gpu.compute_capability))
        raise BundleRejected(
            f"bundle {key} was built for compute capability {b.get('compute_capability')} "
            f"(hardware compatibility {level!r}); this GPU ({gpu.name}) is {shown}"
        )
    cuda_major = b.get("cuda_major")
    if cuda_major and gpu.driver_version // 1000 < int(cuda_major):
        raise BundleRejected(
            f"bundle {key} was built with CUDA {cuda_major}; this driver supports CUDA up to "
            f"{gpu.driver_version // 1000}.{gpu.driver_version % 1000 // 10}"
        )
    min_driver = b.get("min_driver")
    if min_driver and gpu.driver_version < int(min_driver):
        raise BundleRejected(f"bundle {key} needs CUDA driver API >= {min_driver}; this driver is {gpu.driver_version}")


def _check_triton(manifest: Manifest, options: dict[str, Any]) -> None:
    if runtime_version("triton") is None:
        raise RuntimeMissing(
            f"bundle {manifest.key} uses a remote Triton server and needs tritonclient, which is not installed"
        )
    if not manifest.backend.get("model_name"):
        raise BundleRejected(f"bundle {manifest.key}: a Triton bundle must record model_name")
    if not (options.get("triton_endpoints") or manifest.backend.get("url")):
        raise BundleRejected(f"bundle {manifest.key}: no Triton URL in the manifest or the configuration")


def check_compat(manifest: Manifest, **options: Any) -> None:
    """Raise RuntimeMissing / BundleRejected, naming the mismatch, unless this machine can run the bundle."""
    name = manifest.backend_name
    if name == "onnxruntime":
        _check_onnxruntime(manifest)
    elif name == "tensorrt":
        _check_tensorrt(manifest)
    elif name == "triton":
        _check_triton(manifest, options)
    else:  # Manifest.from_dict already restricts names
        raise BundleRejected(f"bundle {manifest.key}: unknown backend {name!r}")
