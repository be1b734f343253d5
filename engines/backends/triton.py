"""Remote Triton Inference Server backend: ``tritonclient`` (gRPC, or HTTP with binary tensors), a pool with failover.

The model is served by one or more Triton servers (the site's ``[triton]
endpoints``, else the bundle's own ``backend.url``). An endpoint joins the
pool only after its model metadata (tensor names, datatypes, shapes,
``max_batch_size``) matches the bundle's model card and the bundle's golden set
answers within tolerance on it: at load a mismatch refuses the bundle with the
mismatch named (:class:`~engines.errors.BundleRejected`); an endpoint probed
back in later (a server restarted, perhaps redeployed) that fails either check
stays out with the reason shown. An endpoint that cannot be reached is left out
and probed again later. Inputs go as binary
tensors and outputs are read with ``as_numpy``.

:meth:`TritonEngine.infer_many` keeps up to ``max_inflight`` batches in flight
per endpoint, each on the least-loaded healthy endpoint, and yields results in
order. A batch whose endpoint fails (refused, timeout, server or model not
ready) is resent to another; when no endpoint is healthy
:class:`~engines.errors.EngineUnavailable` is raised and the job waits in the
queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends._base import Engine, InferenceError
from engines.backends._triton_pool import Endpoint, EndpointPool, parse_endpoint
from engines.errors import BundleRejected, EngineUnavailable, RuntimeMissing
from engines.manifest import Manifest, TensorSpec

__all__ = ["DEFAULT_MAX_INFLIGHT", "TRITON_DATATYPES", "TritonEngine"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_INFLIGHT = 4
#: model-card dtype -> Triton datatype (KServe v2)
TRITON_DATATYPES = {
    "float32": "FP32", "float16": "FP16", "int8": "INT8", "uint8": "UINT8", "int32": "INT32", "int64": "INT64",
    "bool": "BOOL",
}
#: gRPC status codes of a request the server understood and refused: resending it elsewhere would not help
_REQUEST_ERRORS = ("StatusCode.INVALID_ARGUMENT", "StatusCode.INTERNAL", "400")
#: words of an error that is the server's state, not the batch's (a model unloaded, a backend stub that died)
_ENDPOINT_HINTS = ("not found", "not ready", "unavailable", "unknown model", "not healthy", "unhealthy", "stub")


class _EndpointFailed(Exception):
    """The endpoint, not the request, failed: take it out and resend the batch."""


class _HttpSlot:
    """A slot of an HTTP endpoint: tritonclient's HTTP client (gevent) only works in the thread that made it,
    so each thread resolves the slot to a client of its own (:meth:`TritonEngine._resolve`)."""

    def __init__(self, address: str, tls: bool) -> None:
        self.address, self.tls = address, tls

    def close(self) -> None:
        """Nothing to release: the clients belong to the threads that use them."""


class TritonEngine(Engine):
    """A model served by a pool of Triton servers (see the module docstring)."""

    thread_safe = True  # the pool, not a lock, bounds concurrency

    def __init__(self, root: Path, manifest: Manifest, endpoints: Iterable[str] = (), url: str | None = None,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT, timeout: float = 30.0) -> None:
        super().__init__(root, manifest)
        try:
            import tritonclient.grpc  # noqa: F401 - fail here, clearly, when the client is absent
            import tritonclient.http  # noqa: F401
        except ImportError as exc:
            raise RuntimeMissing(f"bundle {manifest.key} uses Triton and needs tritonclient[grpc,http]: {exc}") from None
        urls = list(endpoints) or [u for u in (url, manifest.backend.get("url")) if u][:1]
        if not urls:
            raise BundleRejected(f"bundle {manifest.key}: no Triton endpoint in the configuration or the manifest")
        for u in urls:
            try:
                parse_endpoint(u)
            except ValueError as exc:
                raise BundleRejected(f"bundle {manifest.key}: {exc}") from None
        self.model_name = str(manifest.backend.get("model_name") or "")
        if not self.model_name:
            raise BundleRejected(f"bundle {manifest.key}: a Triton bundle must record model_name")
        self.model_version = str(manifest.backend.get("model_version") or "")
        self.timeout = float(timeout)
        self._local = threading.local()
        self.pool = EndpointPool(self.model_name, urls, max_inflight, self._client, self._check)
        try:
            self._admit_all()
        except BaseException:
            self.pool.close()
            raise
        self._executor = ThreadPoolExecutor(max_workers=self.pool.capacity, thread_name_prefix="triton")

    @property
    def capacity(self) -> int:
        """Jobs that may use the pool at once: one per server (each job keeps ``max_inflight`` batches in flight)."""
        return len(self.pool.endpoints)

    # ------------------------------------------------------------------ endpoints

    def _client(self, url: str) -> Any:
        protocol, address, tls = parse_endpoint(url)
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            return grpcclient.InferenceServerClient(url=address, ssl=tls)
        return _HttpSlot(address, tls)

    def _resolve(self, client: Any) -> Any:
        """The client to call: an HTTP slot becomes this thread's client of that endpoint."""
        if not isinstance(client, _HttpSlot):
            return client
        import tritonclient.http as httpclient

        clients: dict[tuple[str, bool], Any] = self._local.__dict__.setdefault("http", {})
        key = (client.address, client.tls)
        if key not in clients:
            clients[key] = httpclient.InferenceServerClient(url=client.address, ssl=client.tls, concurrency=1,
                                                            connection_timeout=self.timeout,
                                                            network_timeout=self.timeout)
        return clients[key]

    def _check(self, url: str, client: Any) -> None:
        """Server and model ready, and the model's metadata matches the card (BundleRejected if not)."""
        client = self._resolve(client)
        # gRPC calls take a deadline; the HTTP client has its network timeout
        kw = {} if isinstance(client, _http_client_type()) else {"client_timeout": self.timeout}
        try:
            if not client.is_server_ready(**kw):
                raise _EndpointFailed("server is not ready")
            if not client.is_model_ready(self.model_name, self.model_version, **kw):
                raise _EndpointFailed(f"model {self.model_name!r} is not ready")
            metadata = _json(client.get_model_metadata(self.model_name, self.model_version, **kw))
            config = _json(client.get_model_config(self.model_name, self.model_version, **kw))
        except _EndpointFailed:
            raise
        except Exception as exc:  # tritonclient and its transports raise many types
            raise _EndpointFailed(_describe(exc)) from None
        mismatch = _mismatch(self.manifest, metadata, config.get("config", config))
        if mismatch:
            raise BundleRejected(
                f"bundle {self.manifest.key}: model {self.model_name!r} on {url} does not match "
                f"the model card: {mismatch}"
            )
        self._golden(url, client)

    def _golden(self, url: str, client: Any) -> None:
        """The bundle's golden set on this endpoint: a server whose model answers differently stays out."""
        from engines.bundle import VerifiedBundle, read_golden
        from engines.registry import golden_error

        inputs, expected = read_golden(VerifiedBundle(self.root, self.manifest, signer=""))  # loaded verified
        try:
            outputs = self._request(client, inputs)
        except InferenceError as exc:
            raise BundleRejected(f"golden set of {self.manifest.key} could not run on {url}: {exc}") from None
        cast = {s.name: np.asarray(outputs[s.name]).astype(s.dtype, copy=False) for s in self.manifest.outputs}
        atol, rtol = float(self.manifest.golden.get("atol", 0.0)), float(self.manifest.golden.get("rtol", 0.0))
        for name, want in expected.items():
            golden_error(self.manifest.key, url, name, cast, want, atol, rtol)

    def _admit_all(self) -> None:
        for endpoint in self.pool.endpoints:
            try:
                client = self._client(endpoint.url)
                try:
                    self._check(endpoint.url, client)
                finally:
                    client.close()
            except BundleRejected:
                raise
            except Exception as exc:
                self.pool.mark_down(endpoint, str(exc))
                continue
            self.pool.admit(endpoint)
        healthy = [s.url for s in self.pool.states() if s.healthy]
        if not healthy:
            raise EngineUnavailable(self.pool.unavailable_message())
        logger.info("Triton model %s for %s on %d of %d endpoint(s)", self.model_name, self.manifest.key,
                    len(healthy), len(self.pool.endpoints))

    # ------------------------------------------------------------------ inference

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._send(inputs, None)

    def _send(self, inputs: dict[str, np.ndarray], only: Endpoint | None) -> dict[str, np.ndarray]:
        tried: set[Endpoint] = set()
        while True:
            endpoint, client = self.pool.acquire(self.timeout * 2, frozenset(tried), only=only)
            t0 = time.monotonic()
            try:
                outputs = self._request(client, inputs)
            except _EndpointFailed as exc:
                self.pool.release(endpoint, client, None)
                self.pool.mark_down(endpoint, str(exc))
                tried.add(endpoint)
                if only is not None:
                    raise EngineUnavailable(f"Triton endpoint {endpoint.url} failed: {exc}") from None
                continue
            except BaseException:
                self.pool.release(endpoint, client, None)
                raise
            self.pool.release(endpoint, client, time.monotonic() - t0)
            return outputs

    def _request(self, client: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        client = self._resolve(client)
        grpc = isinstance(client, grpcclient.InferenceServerClient)
        module: Any = grpcclient if grpc else httpclient
        request = []
        for spec in self.manifest.inputs:
            array = np.ascontiguousarray(inputs[spec.name])
            tensor = module.InferInput(spec.name, list(array.shape), TRITON_DATATYPES[spec.dtype])
            if grpc:
                tensor.set_data_from_numpy(array)
            else:
                tensor.set_data_from_numpy(array, binary_data=True)
            request.append(tensor)
        if grpc:
            wanted = [grpcclient.InferRequestedOutput(s.name) for s in self.manifest.outputs]
            call = {"client_timeout": self.timeout}
        else:
            wanted = [httpclient.InferRequestedOutput(s.name, binary_data=True) for s in self.manifest.outputs]
            call = {}
        try:
            result = client.infer(self.model_name, request, model_version=self.model_version, outputs=wanted, **call)
        except Exception as exc:
            message = _describe(exc)
            status = str(getattr(exc, "status", lambda: "")() or "")
            if status in _REQUEST_ERRORS and not any(h in message.lower() for h in _ENDPOINT_HINTS):
                raise InferenceError(f"{self.manifest.key}: Triton refused the batch: {message}") from None
            raise _EndpointFailed(message) from None
        outputs = {}
        for spec in self.manifest.outputs:
            value = result.as_numpy(spec.name)
            if value is None:
                raise InferenceError(f"{self.manifest.key}: Triton returned no output {spec.name!r}")
            outputs[spec.name] = value
        return outputs

    def infer_many(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """Results of ``batches`` in order, with up to ``max_inflight`` batches in flight per endpoint."""
        window: deque[Future[dict[str, np.ndarray]]] = deque()
        try:
            for inputs in batches:
                if self._closed:
                    raise InferenceError(f"{self.manifest.key}: engine is closed")
                self.check_inputs(inputs)
                window.append(self._executor.submit(self.infer, inputs))
                while len(window) >= self.pool.capacity or (window and window[0].done()):
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    def infer_each(self, inputs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """The batch on every healthy endpoint (the golden set at install): endpoint URL -> outputs."""
        self.check_inputs(inputs)
        results = {}
        for endpoint in self.pool.endpoints:
            if endpoint.healthy:
                outputs = self._send(inputs, endpoint)
                results[endpoint.url] = {s.name: np.asarray(outputs[s.name]).astype(s.dtype, copy=False)
                                         for s in self.manifest.outputs}
        if not results:
            raise EngineUnavailable(self.pool.unavailable_message())
        return results

    def _release(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.pool.close()


# ---------------------------------------------------------------------- metadata against the card


def _http_client_type() -> type:
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient  # type: ignore[no-any-return]


def _json(value: Any) -> dict[str, Any]:
    """gRPC answers protobuf messages; HTTP answers dicts."""
    if isinstance(value, dict):
        return value
    from google.protobuf.json_format import MessageToDict

    return dict(MessageToDict(value, preserving_proto_field_name=True))


def _mismatch(manifest: Manifest, metadata: dict[str, Any], config: dict[str, Any]) -> str:
    """What differs between the served model and the card ('' when they match)."""
    max_batch = int(config.get("max_batch_size", 0) or 0)
    served_in = {t["name"]: t for t in metadata.get("inputs", [])}
    served_out = {t["name"]: t for t in metadata.get("outputs", [])}
    card_in = [s.name for s in manifest.inputs]
    if set(served_in) != set(card_in):
        return f"the server's inputs are {sorted(served_in)}, the card's {sorted(card_in)}"
    missing = [s.name for s in manifest.outputs if s.name not in served_out]
    if missing:
        return f"the server has no output(s) {missing}; it has {sorted(served_out)}"
    for spec in manifest.inputs:
        problem = _tensor_mismatch(spec, served_in[spec.name], max_batch > 0)
        if problem:
            return f"input {problem}"
    for spec in manifest.outputs:
        problem = _tensor_mismatch(spec, served_out[spec.name], max_batch > 0)
        if problem:
            return f"output {problem}"
    batched = isinstance(manifest.inputs[0].shape[0], str)
    if batched and max_batch > 0 and manifest.batch_sizes[1] > max_batch:
        return f"the card sends batches up to {manifest.batch_sizes[1]}, the server's max_batch_size is {max_batch}"
    return ""


def _tensor_mismatch(spec: TensorSpec, served: dict[str, Any], batched: bool) -> str:
    want = TRITON_DATATYPES[spec.dtype]
    if served.get("datatype") != want:
        return f"{spec.name!r} is {served.get('datatype')} on the server, {want} ({spec.dtype}) on the card"
    shape = [int(d) for d in served.get("shape", [])]
    if batched and shape[:1] != [-1]:  # Triton's metadata shows the batch dimension as -1
        shape = [-1, *shape]
    card = ["N" if isinstance(d, str) else d for d in spec.shape]
    ok = len(shape) == len(card) and all(
        s == -1 or (isinstance(c, int) and s == c) for s, c in zip(shape, card, strict=False))
    if not ok:
        return f"{spec.name!r} has shape {shape} on the server, {list(spec.shape)} on the card"
    return ""


def _describe(exc: BaseException) -> str:
    text = str(exc.message() if hasattr(exc, "message") and callable(exc.message) else exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__

