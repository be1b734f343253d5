"""TensorRT build: runs only where TensorRT and a GPU exist (never faked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.errors import ExportError
from export.tensorrt_build import TrtBuildSettings, build_engine, tensorrt_available
from engines.cards import ModelCard
from export.triton_repo import config_pbtxt
from tests.export.conftest import Exported


def test_triton_config_has_dynamic_batching_for_batched_models() -> None:
    card = ModelCard.from_dict({"inputs": [{"name": "image", "shape": ["N", 3, 96, 96], "dtype": "float32"}],
                                "outputs": [{"name": "embedding", "shape": ["N", 64], "dtype": "float32"}]})
    text = config_pbtxt("pathology_tile", card, "onnxruntime_onnx", 64)
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching") and list(config.input[0].dims) == [3, 96, 96]


def test_build_without_tensorrt_names_the_reason(tmp_path: Path) -> None:
    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(ExportError, match="TensorRT is not installed"):
        build_engine(tmp_path / "model.onnx", tmp_path / "model.plan")


@pytest.mark.slow  # export training
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_strongly_typed_build(exported: Exported, tmp_path: Path, precision: str) -> None:
    if not tensorrt_available():
        pytest.skip("tensorrt is not installed (it cannot be installed in this environment)")
    pytest.importorskip("pycuda.driver", reason="pycuda is needed to read the GPU's compute capability")
    model = exported.cache / "work" / "pathology_tile" / precision / "model.onnx"
    record = build_engine(model, tmp_path / "model.plan", TrtBuildSettings(timing_cache=tmp_path / "timing.cache"))
    assert (tmp_path / "model.plan").stat().st_size > 0 and (tmp_path / "timing.cache").exists()
    assert record["name"] == "tensorrt" and record["strongly_typed"] and "." in record["compute_capability"]
