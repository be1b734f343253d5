"""Build a TensorRT engine (plan) from the Q/DQ int8 or the fp16 ONNX (import-lazy; TensorRT 10.x and 11.x).

Only the APIs both versions share: a *strongly typed* network (precision comes from
the ONNX graph's types and Q/DQ nodes, so no implicit INT8 calibrator and no
weak-typing FP16/INT8 builder flags), ``OnnxParser.parse_from_file`` (which reads
``model.onnx.data`` external weights from the model's directory), one optimization
profile for the batch range, a persistent timing cache, an optional
hardware-compatibility level, and tensor names instead of binding indices.
The returned record is what the engines manifest's ``backend`` needs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.files import atomic_write
from export.errors import ExportError

logger = logging.getLogger(__name__)

HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}


@dataclass(frozen=True)
class TrtBuildSettings:
    """How the plan is built."""

    batch_range: tuple[int, int, int] = (1, 32, 64)  #: min, opt, max of every dynamic leading axis
    workspace_bytes: int = 2 << 30
    timing_cache: Path | None = None  #: read before and written after the build
    hardware_compatibility: str = "none"  #: "none" | "ampere_plus" | "same_compute_capability"


def tensorrt_available() -> bool:
    """Whether ``import tensorrt`` works on this machine."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ExportError(f"TensorRT is not installed on this machine ({exc}); build the plan on the target GPU") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise ExportError(f"TensorRT {trt.__version__} is too old; 10.x or 11.x is needed")
    return trt


def build_engine(onnx_path: Path, plan_path: Path, settings: TrtBuildSettings = TrtBuildSettings()) -> dict[str, Any]:
    """Parse ``onnx_path`` into a strongly typed network, build, write ``plan_path``; return the backend record."""
    trt = _import_tensorrt()
    if settings.hardware_compatibility not in HARDWARE_COMPATIBILITY:
        raise ExportError(
            f"hardware compatibility {settings.hardware_compatibility!r} is not one of {sorted(HARDWARE_COMPATIBILITY)}"
        )
    lo, opt, hi = settings.batch_range
    if not 1 <= lo <= opt <= hi:
        raise ExportError(f"batch range {settings.batch_range} must satisfy 1 <= min <= opt <= max")
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    # 10.x: opt in to strong typing; 11.x: always strongly typed, the flag is deprecated and ignored
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    major = int(str(trt.__version__).split(".")[0])
    network = builder.create_network(1 << int(strongly_typed) if strongly_typed is not None and major < 11 else 0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    profiles = _add_profile(builder, network, config, (lo, opt, hi))
    cache_bytes = settings.timing_cache.read_bytes() if settings.timing_cache and settings.timing_cache.exists() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    if settings.hardware_compatibility != "none":
        config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[settings.hardware_compatibility]
        )
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log)")
    _atomic_write(plan_path, bytes(plan))
    if settings.timing_cache is not None:
        _atomic_write(settings.timing_cache, bytes(config.get_timing_cache().serialize()))
    runtime = trt.Runtime(trt_logger)
    engine = runtime.deserialize_cuda_engine(bytes(plan))
    record = _gpu_record()
    record.update(
        {
            "name": "tensorrt",
            "trt_version": str(trt.__version__),
            "hardware_compatibility": settings.hardware_compatibility,
            "version_compatible": False,
            "lean_runtime": False,
            "strongly_typed": True,
            "profiles": profiles,
            "device_memory_size": int(engine.device_memory_size_v2),  # 10.x and 11.x (device_memory_size is gone in 11)
            "io": _io_tensors(trt, engine),
        }
    )
    logger.info("built TensorRT %s plan %s (%s)", trt.__version__, plan_path.name, record.get("compute_capability"))
    return record


def _add_profile(
    builder: Any, network: Any, config: Any, batches: tuple[int, int, int]
) -> dict[str, dict[str, list[int]]]:
    """One optimization profile: every input's dynamic (-1) axes at the min, opt and max batch sizes."""
    profile = builder.create_optimization_profile()
    profiles: dict[str, dict[str, list[int]]] = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = list(tensor.shape)
        shapes = [[(b if d == -1 else d) for d in shape] for b in batches]
        profile.set_shape(tensor.name, *shapes)
        profiles[tensor.name] = {"min": shapes[0], "opt": shapes[1], "max": shapes[2]}
    config.add_optimization_profile(profile)
    return profiles


def _io_tensors(trt: Any, engine: Any) -> dict[str, str]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return {n: str(engine.get_tensor_mode(n)).split(".")[-1].lower() for n in names}


def _gpu_record() -> dict[str, Any]:
    """Compute capability, GPU name, CUDA driver of device 0 (pycuda via engines.compat)."""
    from engines.compat import gpu_info

    info = gpu_info()
    if info is None:
        raise ExportError("no CUDA device visible (pycuda missing or no GPU): TensorRT plans are built on the target GPU")
    major, minor = info.compute_capability
    return {
        "compute_capability": f"{major}.{minor}",
        "gpu_name": info.name,
        "min_driver": info.driver_version,
        "cuda_major": info.driver_version // 1000,
    }


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)  # temporary name, fsync, rename, directory fsync


def describe(record: Mapping[str, Any]) -> str:
    """One line for the CLI."""
    return f"TensorRT {record.get('trt_version')} on {record.get('gpu_name')} (sm {record.get('compute_capability')})"
