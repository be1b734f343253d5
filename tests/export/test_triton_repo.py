"""The Triton model repository: config.pbtxt is Triton's ModelConfig protobuf, read back as one."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from engines.cards import ModelCard, TensorSpec
from export.errors import ExportError
from export.triton_repo import write_triton_model

TILE_CARD = ModelCard.from_dict({"inputs": [{"name": "image", "shape": ["N", 3, 224, 224], "dtype": "float32"}],
                                 "outputs": [{"name": "embedding", "shape": ["N", 768], "dtype": "float16"}]})
SLIDE_CARD = ModelCard.from_dict({"inputs": [{"name": "embeddings", "shape": ["N", 768], "dtype": "float32"}],
                                  "outputs": [{"name": "probability", "shape": [1], "dtype": "float32"},
                                              {"name": "attention", "shape": ["N"], "dtype": "float32"}]})


def _read(model_dir: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_batched_model_gets_dynamic_batching_with_the_cards_batch_sizes(tmp_path: Path) -> None:
    (tmp_path / "model.plan").write_bytes(b"plan")
    model_dir = write_triton_model(tmp_path / "repo", "pathology_tile_fp16", [tmp_path / "model.plan"], TILE_CARD,
                                   batch_sizes=(8, 48))
    config = _read(model_dir)
    assert (config.name, config.platform, config.max_batch_size) == ("pathology_tile_fp16", "tensorrt_plan", 48)
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("image", model_config_pb2.TYPE_FP32, [3, 224, 224])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("embedding", model_config_pb2.TYPE_FP16, [768])]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32, 48]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (model_dir / "1" / "model.plan").read_bytes() == b"plan"


def test_unbatched_model_keeps_full_shapes_and_external_data(tmp_path: Path) -> None:
    (tmp_path / "slide.onnx").write_bytes(b"onnx")
    (tmp_path / "slide.onnx.data").write_bytes(b"weights")
    model_dir = write_triton_model(tmp_path / "repo", "slide", [tmp_path / "slide.onnx", tmp_path / "slide.onnx.data"],
                                   SLIDE_CARD)
    config = _read(model_dir)
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert [list(i.dims) for i in config.input] == [[-1, 768]] and [list(o.dims) for o in config.output] == [[1], [-1]]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx", "slide.onnx.data"]


def test_unknown_model_type_and_dtype_are_named(tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(ExportError, match=r"Triton serves .onnx or .plan models, got 'm.pt'"):
        write_triton_model(tmp_path / "repo", "m", [tmp_path / "m.pt"], TILE_CARD)
    (tmp_path / "m.onnx").write_bytes(b"")
    card = ModelCard(inputs=(TensorSpec("x", ("N", 2), "complex64"),), outputs=TILE_CARD.outputs)
    with pytest.raises(ExportError, match=r"tensor 'x': dtype 'complex64' has no Triton type"):
        write_triton_model(tmp_path / "repo", "m", [tmp_path / "m.onnx"], card)
