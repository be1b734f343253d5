"""Tiny ONNX models and signed bundles for the engines tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from engines.bundle import write_bundle
from engines.signing import generate_keypair

IN_FEATURES = 8
OUT_FEATURES = 3


def weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((IN_FEATURES, OUT_FEATURES)).astype(np.float32),
            rng.standard_normal(OUT_FEATURES).astype(np.float32))


def linear_model(path: Path, seed: int = 0, dtype: str = "float32", external_data: bool = False) -> Path:
    """``y = relu(x @ W + b) * 1`` with a dynamic batch ``N``; fp32 or fp16 throughout."""
    w, b = weights(seed)
    np_type = np.float16 if dtype == "float16" else np.float32
    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", elem, ["N", IN_FEATURES])],
        [helper.make_tensor_value_info("y", elem, ["N", OUT_FEATURES])],
        [numpy_helper.from_array(w.astype(np_type), "W"), numpy_helper.from_array(b.astype(np_type), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def int8_model(path: Path, seed: int = 0) -> Path:
    """Q/DQ int8 version of :func:`linear_model`, calibrated on random inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = linear_model(path.with_name(path.stem + "-fp32.onnx"), seed)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.batches = iter([{"x": rng.standard_normal((4, IN_FEATURES)).astype(np.float32)} for _ in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(str(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return path


def card() -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "shape": ["N", IN_FEATURES], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": ["N", OUT_FEATURES], "dtype": "float32", "meaning": "test"}],
    }


def golden_inputs() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(7).standard_normal((2, IN_FEATURES)).astype(np.float32)}


def run_direct(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].astype(np.float16 if i.type == "tensor(float16)" else inputs[i.name].dtype)
            for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def make_bundle(
    out: Path, key_pem: bytes, version: str = "1.0.0", seed: int = 0, task: str = "test_task",
    precision: str = "fp32", golden_outputs: dict[str, np.ndarray] | None = None, external_data: bool = False,
    **fields: Any,
) -> Path:
    """A signed bundle of the linear model; the golden outputs come from onnxruntime unless given."""
    work = out.parent / f".{out.name}-src"
    work.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        model = int8_model(work / "model.onnx", seed)
    else:
        model = linear_model(work / "model.onnx", seed, "float16" if precision == "fp16" else "float32", external_data)
    files = {"model.onnx": model}
    if external_data:
        files["model.onnx.data"] = work / "model.onnx.data"
    inputs = golden_inputs()
    outputs = golden_outputs or {k: v.astype(np.float32) for k, v in run_direct(model, inputs).items()}
    manifest = {
        "task": task, "version": version, "vendor": "tests", "precision": precision,
        "backend": {"name": "onnxruntime", "min_version": "1.17"}, "model_card": card(),
        "batch_sizes": [1, 16], "metrics": {"auc": 0.9},
        "golden": {"inputs": inputs, "outputs": outputs, "atol": 1e-3, "rtol": 1e-3},
        **fields,
    }
    return write_bundle(out, manifest, files, key_pem)


def keypair(directory: Path, name: str = "vendor") -> bytes:
    pair = generate_keypair(directory, name)
    return pair.private_key.read_bytes()
