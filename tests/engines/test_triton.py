"""Triton backend against a real KServe v2 HTTP server on loopback that runs ONNX Runtime."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from engines.errors import BundleRejected
from engines.registry import Registry
from tests.peers import free_port
from tests.engines._helpers import IN_FEATURES, card, golden_inputs, linear_model, run_direct

_DTYPES = {"FP32": np.float32, "FP16": np.float16}
_KSERVE = {"tensor(float)": "FP32", "tensor(float16)": "FP16"}


class KServeServer(ThreadingHTTPServer):
    """A minimal KServe v2 server: ``/v2/models/NAME/ready`` and ``/v2/models/NAME/infer``."""

    def __init__(self, models: dict[str, Path]) -> None:
        self.sessions = {n: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for n, p in models.items()}
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: KServeServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _model(self, suffix: str) -> ort.InferenceSession | None:
        parts = self.path.strip("/").split("/")
        self.server.requests.append(self.path)
        if len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == suffix:
            return self.server.sessions.get(parts[2])
        return None

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply(200, {}) if self._model("ready") is not None else self._reply(404, {"error": "no such model"})

    def do_POST(self) -> None:  # noqa: N802
        session = self._model("infer")
        if session is None:
            self._reply(404, {"error": "no such model"})
            return
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        feed = {i["name"]: np.asarray(i["data"], _DTYPES[i["datatype"]]).reshape(i["shape"]) for i in request["inputs"]}
        names = [o["name"] for o in request["outputs"]]
        types = {o.name: o.type for o in session.get_outputs()}
        values = session.run(names, feed)
        self._reply(200, {"outputs": [{"name": n, "shape": list(v.shape), "datatype": _KSERVE[types[n]],
                                       "data": v.ravel().tolist()} for n, v in zip(names, values, strict=True)]})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KServeServer]:
    (tmp_path / "served").mkdir()
    srv = KServeServer({"linear": linear_model(tmp_path / "served" / "model.onnx", seed=4)})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def _triton_bundle(tmp_path: Path, pem: bytes, url: str, model_name: str = "linear") -> Path:
    from engines.bundle import write_bundle

    model = tmp_path / "served" / "model.onnx"
    x = golden_inputs()
    fields = {"task": "test_task", "version": "1.0", "precision": "fp32",
              "backend": {"name": "triton", "model_name": model_name, "url": url}, "model_card": card(),
              "batch_sizes": [1, 16], "golden": {"inputs": x, "outputs": run_direct(model, x), "atol": 1e-5}}
    return write_bundle(tmp_path / "bundle", fields, {"model.onnx": model}, pem)


def test_triton_engine_matches_onnxruntime(tmp_path: Path, registry: Registry, vendor_pem: bytes,
                                           server: KServeServer) -> None:
    registry.install(_triton_bundle(tmp_path, vendor_pem, server.url), "tester")
    registry.activate("test_task", "1.0", "tester")
    x = np.random.default_rng(5).standard_normal((6, IN_FEATURES)).astype(np.float32)
    with registry.load_active("test_task") as engine:
        assert engine.backend == "triton"
        out = engine.infer({"x": x})["y"]
    np.testing.assert_allclose(out, run_direct(tmp_path / "served" / "model.onnx", {"x": x})["y"], rtol=1e-6)
    assert "/v2/models/linear/ready" in server.requests and "/v2/models/linear/infer" in server.requests


def test_url_from_configuration_overrides_the_manifest(tmp_path: Path, registry: Registry, vendor_pem: bytes,
                                                       server: KServeServer) -> None:
    bundle = _triton_bundle(tmp_path, vendor_pem, f"http://127.0.0.1:{free_port()}")
    site = Registry(registry.root, registry.trusted_keys_dir, triton_url=server.url)
    assert site.install(bundle, "tester").version == "1.0"


@pytest.mark.parametrize(
    ("model_name", "url", "reason"),
    [("nope", None, "model 'nope' is not ready on http://127.0.0.1:\\d+ \\(HTTP 404\\)"),
     ("linear", "closed-port", "Triton server http://127.0.0.1:\\d+ is unreachable")],
)
def test_unready_or_unreachable_server_refuses_install(
    tmp_path: Path, registry: Registry, vendor_pem: bytes, server: KServeServer, model_name: str, url: str | None,
    reason: str,
) -> None:
    if url == "closed-port":
        url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BundleRejected, match=reason):
        registry.install(_triton_bundle(tmp_path, vendor_pem, url or server.url, model_name), "tester")
    assert registry.list() == []
