"""Serve ONNX models from a real ``tritonserver`` (PyTriton), on ONNX Runtime, for the tests and benches.

Runs under the Triton virtual environment (``.venv-triton``, made by
``scripts/setup.sh`` with Debian's Python: PyTriton's Python-backend stub
breaks on pyenv's 3.11.7), not the project's, so it imports nothing of the
project. ``tests/triton_peer.py`` starts it in its own process group and kills
that group (``tritonserver`` included) to stop it.

Usage: ``python _triton_serve.py SPEC.json`` where the spec is::

    {"http_port": N, "grpc_port": N, "threads": 1,
     "models": [{"name": "m", "onnx": "/path/model.onnx", "batching": true, "max_batch_size": 64,
                 "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 8]}],
                 "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}]}]}

Shapes include the batch dimension; tensor names may differ from the ONNX graph's
(they are mapped in order), which is how a test serves a model that does not
match its card.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def _infer_fn(spec: dict[str, Any], threads: int) -> Callable[..., dict[str, np.ndarray]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(spec["onnx"], options, providers=["CPUExecutionProvider"])
    graph_in = [i.name for i in session.get_inputs()]
    graph_out = [o.name for o in session.get_outputs()]
    served_in = [t["name"] for t in spec["inputs"]]
    served_out = [t["name"] for t in spec["outputs"]]

    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        feed = {g: inputs[s] for g, s in zip(graph_in, served_in)}
        values = session.run(graph_out[: len(served_out)], feed)
        return dict(zip(served_out, values))

    if spec.get("batching", True):
        return batch(infer)

    def per_request(requests: list[Any]) -> list[dict[str, np.ndarray]]:  # an unbatched model: one by one
        return [infer(**{name: request[name] for name in served_in}) for request in requests]

    return per_request


def _tensors(entries: list[dict[str, Any]], batching: bool) -> list[Tensor]:
    return [Tensor(name=e["name"], dtype=np.dtype(e["dtype"]).type,
                   shape=tuple(e["shape"][1:] if batching else e["shape"])) for e in entries]


def main(path: str) -> None:
    spec = json.loads(open(path, encoding="utf-8").read())
    config = TritonConfig(http_address="127.0.0.1", http_port=spec["http_port"], grpc_address="127.0.0.1",
                          grpc_port=spec["grpc_port"], allow_metrics=False, exit_timeout_secs=1)
    with Triton(config=config) as triton:
        for model in spec["models"]:
            batching = bool(model.get("batching", True))
            triton.bind(
                model_name=model["name"], infer_func=_infer_fn(model, int(spec.get("threads", 1))),
                inputs=_tensors(model["inputs"], batching), outputs=_tensors(model["outputs"], batching),
                config=ModelConfig(batching=batching, max_batch_size=int(model.get("max_batch_size", 64))),
                strict=True,
            )
        print("serving", flush=True)
        triton.serve()


if __name__ == "__main__":
    main(sys.argv[1])
