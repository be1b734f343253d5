"""Engines load on the scheduling slot's device: ONNX Runtime and TensorRT take the device they are given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.backends._base import cuda_device_id
from engines.errors import RuntimeMissing
from engines.registry import Registry
from tests.engines._helpers import golden_inputs, make_bundle


@pytest.fixture
def installed(registry: Registry, tmp_path: Path, vendor_pem: bytes) -> Registry:
    manifest = registry.install(make_bundle(tmp_path / "b1", vendor_pem, "1.0"), "tests")
    registry.activate("test_task", manifest.version, "tests")
    return registry


def test_cpu_slot_gets_its_own_cpu_session_with_its_threads(installed: Registry) -> None:
    first = installed.load_active("test_task", cpu_threads=1, device="cpu")
    second = installed.load_active("test_task", cpu_threads=1, device="cpu")
    try:
        assert first.providers == ["CPUExecutionProvider"] and first.device == "cpu"  # type: ignore[attr-defined]
        assert first.session is not second.session  # type: ignore[attr-defined]
        assert first.session.get_session_options().intra_op_num_threads == 1  # type: ignore[attr-defined]
        x = golden_inputs()
        np.testing.assert_array_equal(first.infer(x)["y"], second.infer(x)["y"])
    finally:
        first.close()
        second.close()


def test_cuda_slot_without_a_cuda_runtime_is_refused_by_name(installed: Registry) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("ONNX Runtime has a CUDA provider here")
    with pytest.raises(RuntimeMissing, match=r"device 'cuda:1' requested for test_task.*no CUDA provider"):
        installed.load_active("test_task", device="cuda:1")


def test_device_names_are_checked(installed: Registry) -> None:
    with pytest.raises(ValueError, match="device 'gpu' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        installed.load_active("test_task", device="gpu")
    assert [cuda_device_id(d) for d in ("auto", "cuda", "cuda:3")] == [0, 0, 3]
    with pytest.raises(ValueError, match="device 'cpu' is not a CUDA device"):
        cuda_device_id("cpu")


def test_tensorrt_refuses_a_cpu_slot_before_loading_anything(installed: Registry) -> None:
    from engines.backends.tensorrt import TensorRTEngine

    manifest = installed.active_manifest("test_task")
    assert manifest is not None and manifest.version == "1.0"
    with pytest.raises(RuntimeMissing, match="TensorRT plan and needs a CUDA device, not 'cpu'"):
        TensorRTEngine(installed.root / "test_task" / "1.0", manifest, device="cpu")
