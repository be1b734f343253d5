"""ONNX Runtime backend: same outputs as onnxruntime called directly; inputs checked against the card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from engines.backends import load_engine
from engines.backends._base import InferenceError
from engines.bundle import verify_directory
from engines.errors import BundleRejected
from tests.engines._helpers import IN_FEATURES, make_bundle, run_direct


@pytest.mark.parametrize(
    ("precision", "external_data"),
    [("fp32", False), ("fp16", False), ("int8", False), ("fp32", True)],
    ids=["fp32", "fp16", "int8-qdq", "fp32-external-data"],
)
def test_same_outputs_as_onnxruntime_directly(
    tmp_path: Path, keys_dir: Path, vendor_pem: bytes, precision: str, external_data: bool
) -> None:
    bundle = verify_directory(make_bundle(tmp_path / "b", vendor_pem, precision=precision,
                                          external_data=external_data), keys_dir)
    model = tmp_path / ".b-src" / "model.onnx"
    if precision == "int8":
        ops = {n.op_type for n in onnx.load(str(model)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = np.random.default_rng(3).standard_normal((5, IN_FEATURES)).astype(np.float32)
    direct = run_direct(model, {"x": x})["y"]
    with load_engine(bundle.root, bundle.manifest, cpu_threads=1) as engine:
        assert engine.batch_sizes == range(1, 17)
        assert "CPUExecutionProvider" in engine.providers  # type: ignore[attr-defined]
        out = engine.infer({"x": x})["y"]
    assert out.dtype == np.float32 and out.shape == (5, 3)
    np.testing.assert_allclose(out, direct.astype(np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        ({"x": np.zeros((2, IN_FEATURES), np.float64)}, "input 'x' is float64, the model takes float32"),
        ({"x": np.zeros((2, 5), np.float32)}, r"shape \[2, 5\], the model takes \['N', 8\]"),
        ({"x": np.zeros((17, IN_FEATURES), np.float32)}, "batch of 17 on 'x'; accepted 1..16"),
        ({"z": np.zeros((2, IN_FEATURES), np.float32)}, r"inputs \['z'\] given, the model takes \['x'\]"),
    ],
)
def test_inputs_are_checked_against_the_model_card(
    tmp_path: Path, keys_dir: Path, vendor_pem: bytes, inputs: dict[str, np.ndarray], reason: str
) -> None:
    bundle = verify_directory(make_bundle(tmp_path / "b", vendor_pem), keys_dir)
    engine = load_engine(bundle.root, bundle.manifest)
    with pytest.raises(InferenceError, match=reason):
        engine.infer(inputs)
    engine.close()
    with pytest.raises(InferenceError, match="closed"):
        engine.infer({"x": np.zeros((1, IN_FEATURES), np.float32)})


def test_card_that_does_not_match_the_graph_is_refused(tmp_path: Path, keys_dir: Path, vendor_pem: bytes) -> None:
    card = {"inputs": [{"name": "image", "shape": ["N", IN_FEATURES], "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": ["N", 3], "dtype": "float32"}]}
    bundle_dir = make_bundle(tmp_path / "b", vendor_pem, model_card=card,
                             golden_outputs={"y": np.zeros((2, 3), np.float32)})
    bundle = verify_directory(bundle_dir, keys_dir)
    with pytest.raises(BundleRejected, match=r"the graph has inputs \['x'\].*card lists inputs \['image'\]"):
        load_engine(bundle.root, bundle.manifest)


def test_external_data_outside_the_bundle_is_refused(tmp_path: Path, keys_dir: Path, vendor_pem: bytes) -> None:
    from engines.bundle import write_bundle
    from tests.engines._helpers import card, golden_inputs, linear_model

    (tmp_path / "src").mkdir()
    model_path = linear_model(tmp_path / "src" / "model.onnx", external_data=True)
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../secret.data"
    onnx.save_model(model, str(model_path))
    fields = {"task": "t", "version": "1", "precision": "fp32", "backend": "onnxruntime", "model_card": card(),
              "golden": {"inputs": golden_inputs(), "outputs": {"y": np.zeros((2, 3), np.float32)}}}
    bundle = verify_directory(write_bundle(tmp_path / "b", fields, {"model.onnx": model_path}, vendor_pem), keys_dir)
    with pytest.raises(BundleRejected, match="external data '../../secret.data', which is not a file of the bundle"):
        load_engine(bundle.root, bundle.manifest)
