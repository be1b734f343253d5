"""TensorRT backend. Needs the ``tensorrt`` package, pycuda and a CUDA GPU; skipped with the reason otherwise.

TensorRT cannot be installed in the development environment, so these tests run
only on a GPU machine with TensorRT. Nothing here fakes TensorRT.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.compat import gpu_info

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                       reason="the tensorrt Python package is not installed on this machine"),
    pytest.mark.skipif(importlib.util.find_spec("pycuda") is None, reason="pycuda is not installed on this machine"),
]


@pytest.fixture
def gpu() -> Any:
    info = gpu_info()
    if info is None:
        pytest.skip("no CUDA device visible to pycuda")
    return info


def _build_plan(onnx_path: Path, plan_path: Path) -> Path:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 8), (4, 8), (16, 8))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    plan_path.write_bytes(bytes(plan))
    return plan_path


def _trt_bundle(tmp_path: Path, pem: bytes, gpu: Any, **backend: Any) -> Path:
    import tensorrt as trt

    from engines.bundle import write_bundle
    from tests.engines._helpers import card, golden_inputs, linear_model, run_direct

    onnx_path = linear_model(tmp_path / "model.onnx")
    plan = _build_plan(onnx_path, tmp_path / "model.plan")
    record = {"name": "tensorrt", "trt_version": trt.__version__,
              "compute_capability": "%d.%d" % gpu.compute_capability, "hardware_compatibility": "none",
              "gpu_name": gpu.name, **backend}
    x = golden_inputs()
    fields = {"task": "test_task", "version": "1.0", "precision": "fp32", "backend": record, "model_card": card(),
              "batch_sizes": [1, 16], "golden": {"inputs": x, "outputs": run_direct(onnx_path, x), "atol": 1e-3,
                                                  "rtol": 1e-3}}
    return write_bundle(tmp_path / "bundle", fields, {"model.plan": plan}, pem)


def test_plan_installs_and_matches_onnxruntime(tmp_path: Path, vendor_pem: bytes, registry: Any, gpu: Any) -> None:
    from tests.engines._helpers import IN_FEATURES, run_direct

    registry.install(_trt_bundle(tmp_path, vendor_pem, gpu), "tester")
    registry.activate("test_task", "1.0", "tester")
    with registry.load_active("test_task") as engine:
        for batch in (1, 5, 16):
            x = np.random.default_rng(batch).standard_normal((batch, IN_FEATURES)).astype(np.float32)
            np.testing.assert_allclose(engine.infer({"x": x})["y"], run_direct(tmp_path / "model.onnx", {"x": x})["y"],
                                       rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    ("backend", "reason"),
    [({"trt_version": "9.0.0.1"}, "was built with TensorRT 9.0.0.1"),
     ({"compute_capability": "1.0"}, "built for compute capability 1.0")],
)
def test_plan_for_another_machine_is_refused_before_loading(
    tmp_path: Path, vendor_pem: bytes, registry: Any, gpu: Any, backend: dict[str, str], reason: str
) -> None:
    from engines.errors import BundleRejected

    with pytest.raises(BundleRejected, match=reason):
        registry.install(_trt_bundle(tmp_path, vendor_pem, gpu, **backend), "tester")
    assert registry.list() == []
