"""What the engines layer costs over calling ONNX Runtime directly.

Measures, in one run on the same model (a small MLP on CPU):
- install (stage + verify + golden run) and load_active (re-verify signature and hashes + session)
  against creating an onnxruntime.InferenceSession directly;
- Engine.infer (card checks, casting) against InferenceSession.run.

Run: ``.venv/bin/python bench/engines_overhead.py [--quick]``. Prints ratios, asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.bundle import write_bundle  # noqa: E402
from engines.registry import Registry  # noqa: E402
from engines.signing import generate_keypair  # noqa: E402


def mlp(path: Path, width: int, depth: int) -> Path:
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == depth - 1 else f"h{i}"
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [out])]
        prev = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def timed(func: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, few repeats")
    args = parser.parse_args()
    width, depth, repeat = (256, 4, 5) if args.quick else (1024, 8, 20)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = mlp(tmp / "model.onnx", width, depth)
        pem = generate_keypair(tmp / "keys", "bench").private_key.read_bytes()
        x = np.random.default_rng(1).standard_normal((32, width)).astype(np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        card = {"inputs": [{"name": "x", "shape": ["N", width], "dtype": "float32"}],
                "outputs": [{"name": "y", "shape": ["N", width], "dtype": "float32"}]}
        fields = {"task": "bench", "version": "1", "precision": "fp32", "backend": "onnxruntime", "model_card": card,
                  "golden": {"inputs": {"x": x[:2]}, "outputs": {"y": session.run(["y"], {"x": x[:2]})[0]}}}
        bundle = write_bundle(tmp / "bundle", fields, {"model.onnx": model}, pem)
        registry = Registry(tmp / "engines", tmp / "keys")
        t_install = timed(lambda: registry.install(bundle, "bench"), 1)
        registry.activate("bench", "1", "bench")
        t_session = timed(lambda: ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]), repeat)
        t_load = timed(lambda: registry.load_active("bench", cpu_threads=1).close(), repeat)
        engine = registry.load_active("bench", cpu_threads=1)
        t_run = timed(lambda: session.run(["y"], {"x": x}), repeat * 5)
        t_infer = timed(lambda: engine.infer({"x": x}), repeat * 5)
        size = model.stat().st_size
        print(f"model: MLP {depth}x{width}, {size / 1e6:.1f} MB, batch 32, 1 CPU thread")
        print(f"install (stage+verify+golden): {t_install * 1e3:.1f} ms")
        print(f"load_active {t_load * 1e3:.1f} ms vs InferenceSession {t_session * 1e3:.1f} ms: "
              f"ratio {t_load / t_session:.2f}")
        print(f"Engine.infer {t_infer * 1e3:.3f} ms vs session.run {t_run * 1e3:.3f} ms: ratio {t_infer / t_run:.3f}")


if __name__ == "__main__":
    main()
