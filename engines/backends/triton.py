"""Remote Triton backend over the KServe v2 HTTP/JSON inference protocol (httpx).

Endpoints used (KServe "Open Inference Protocol" v2):
``GET /v2/models/NAME[/versions/V]/ready`` at load, and
``POST /v2/models/NAME[/versions/V]/infer`` with
``{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]}``.
The bundle still carries the model file (what the site deploys on the
server) and its golden set, which install runs against the server.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from engines.backends._base import Engine, InferenceError
from engines.errors import BundleRejected, RuntimeMissing
from engines.manifest import Manifest

__all__ = ["KSERVE_DATATYPES", "TritonEngine"]

logger = logging.getLogger(__name__)

#: numpy dtype name -> KServe v2 datatype
KSERVE_DATATYPES = {
    "float32": "FP32", "float16": "FP16", "float64": "FP64", "int8": "INT8", "uint8": "UINT8",
    "int32": "INT32", "int64": "INT64", "bool": "BOOL",
}
_NUMPY = {v: k for k, v in KSERVE_DATATYPES.items()}


class TritonEngine(Engine):
    """A model served by a remote Triton (or any KServe v2) server."""

    def __init__(self, root: Path, manifest: Manifest, url: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(root, manifest)
        try:
            import httpx
        except ImportError:
            raise RuntimeMissing(f"bundle {manifest.key} uses a remote Triton server and needs httpx") from None
        base = url or manifest.backend.get("url")
        if not base:
            raise BundleRejected(f"bundle {manifest.key}: no Triton URL in the manifest or the configuration")
        self.url = str(base).rstrip("/")
        name = quote(str(manifest.backend["model_name"]), safe="")
        version = manifest.backend.get("model_version")
        self._path = f"/v2/models/{name}" + (f"/versions/{quote(str(version), safe='')}" if version else "")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        try:
            response = self._http.get(f"{self._path}/ready")
        except httpx.HTTPError as exc:
            self._http.close()
            raise BundleRejected(f"bundle {manifest.key}: Triton server {self.url} is unreachable: {exc}") from None
        if response.status_code != 200:
            self._http.close()
            raise BundleRejected(
                f"bundle {manifest.key}: model {manifest.backend['model_name']!r} is not ready on {self.url} "
                f"(HTTP {response.status_code})"
            )
        logger.info("using Triton model %s at %s for %s", manifest.backend["model_name"], self.url, manifest.key)

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import httpx

        body = {
            "inputs": [
                {"name": name, "shape": list(a.shape), "datatype": KSERVE_DATATYPES[a.dtype.name],
                 "data": a.ravel().tolist()}
                for name, a in inputs.items()
            ],
            "outputs": [{"name": s.name} for s in self.manifest.outputs],
        }
        try:
            response = self._http.post(f"{self._path}/infer", json=body)
        except httpx.HTTPError as exc:
            raise InferenceError(f"{self.manifest.key}: Triton server {self.url} failed: {exc}") from None
        if response.status_code != 200:
            raise InferenceError(
                f"{self.manifest.key}: Triton answered HTTP {response.status_code}: {response.text[:200]}"
            )
        return _decode(self.manifest.key, response.json())

    def _release(self) -> None:
        self._http.close()


def _decode(key: str, payload: Any) -> dict[str, np.ndarray]:
    outputs: dict[str, np.ndarray] = {}
    try:
        for out in payload["outputs"]:
            dtype = _NUMPY[out["datatype"]]
            outputs[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InferenceError(f"{key}: Triton response is not a KServe v2 inference response: {exc!r}") from None
    return outputs
