"""The Triton backend against two real tritonservers (PyTriton, ONNX Runtime inside), on loopback.

The servers start once for the module (a few seconds each) and host the
linear test model, a copy whose input is named differently (a model that does
not match its card) and the tiny pathology tile and slide models. Tests that
kill a server leave it to :func:`servers` to restart it on the same ports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.jobs import Job, JobQueue
from appliance.state import StateStore
from appliance.worker import EngineCache, ProgressFn, Worker
from engines.backends import endpoint_states
from engines.backends.onnxruntime import OnnxRuntimeEngine
from engines.bundle import verify_directory, write_bundle
from engines.errors import BundleRejected, EngineUnavailable
from engines.registry import Registry
from tests.engines._helpers import IN_FEATURES, card, golden_inputs, linear_model, run_direct
from tests.peers import free_port
from tests.pathology.tiny_engines import MEAN, STD, slide_model, tile_model
from tests.triton_peer import TritonServer, require_triton, served_model

pytestmark = pytest.mark.slow  # two real tritonservers

TILE = 64
DIM = 16
TILE_CARD = {"inputs": [{"name": "image", "shape": ["N", 3, TILE, TILE], "dtype": "float32"}],
             "outputs": [{"name": "embedding", "shape": ["N", DIM], "dtype": "float32"}],
             "tile_size": TILE, "mpp": 1.0, "mean": MEAN, "std": STD}
SLIDE_CARD = {"inputs": [{"name": "embeddings", "shape": ["N", DIM], "dtype": "float32"}],
              "outputs": [{"name": "probability", "shape": [1], "dtype": "float32"},
                          {"name": "attention", "shape": ["N"], "dtype": "float32"},
                          {"name": "tile_scores", "shape": ["N"], "dtype": "float32"},
                          {"name": "attention_logits", "shape": ["N"], "dtype": "float32"}],
              "threshold": 0.5,
              "bag_pooling": {"attention_logits": "attention_logits", "tile_values": "tile_scores", "head": "identity"}}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton-models")
    onnx.save_model(tile_model(DIM), str(root / "tile.onnx"))
    onnx.save_model(slide_model(DIM), str(root / "slide.onnx"))
    return {"linear": linear_model(root / "linear.onnx", seed=4), "tile": root / "tile.onnx",
            "slide": root / "slide.onnx", "other": linear_model(root / "other.onnx", seed=5)}


@pytest.fixture(scope="module")
def _pair(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TritonServer]]:
    require_triton()
    c = card()
    wrong_inputs = [{**c["inputs"][0], "name": "features"}]
    common = [
        served_model("linear", models["linear"], c["inputs"], c["outputs"], max_batch_size=16),
        served_model("tile", models["tile"], TILE_CARD["inputs"], TILE_CARD["outputs"], max_batch_size=64),
        served_model("slide", models["slide"], SLIDE_CARD["inputs"], SLIDE_CARD["outputs"], batching=False),
    ]
    wrong = served_model("linear_wrong", models["linear"], wrong_inputs, c["outputs"], max_batch_size=16)
    # "linear_b": the linear model on server 0, other weights on server 1 (a server redeployed wrongly)
    b0 = served_model("linear_b", models["linear"], c["inputs"], c["outputs"], max_batch_size=16)
    b1 = served_model("linear_b", models["other"], c["inputs"], c["outputs"], max_batch_size=16)
    pair = [TritonServer(tmp_path_factory.mktemp(f"triton-{i}"), spec)
            for i, spec in enumerate([[*common, wrong, b0], [*common, b1]])]
    try:
        _start(pair)
        yield pair
    finally:
        for server in pair:
            server.kill()


def _start(servers: list[TritonServer]) -> None:
    """Start the servers that are not running, all at once."""
    down = [s for s in servers if s.process is None or s.process.poll() is not None]
    for server in down:
        server.process = None
        server.launch()
    for server in down:
        server.wait_ready()


@pytest.fixture
def servers(_pair: list[TritonServer]) -> list[TritonServer]:
    """Both servers running (a test before may have killed one)."""
    _start(_pair)
    return _pair


def _bundle(out: Path, pem: bytes, model: Path, model_name: str, model_card: dict[str, Any], task: str,
            golden: dict[str, np.ndarray], batch_sizes: list[int], url: str | None = None) -> Path:
    backend: dict[str, Any] = {"name": "triton", "model_name": model_name}
    if url:
        backend["url"] = url
    fields = {"task": task, "version": "1.0", "precision": "fp32", "backend": backend, "model_card": model_card,
              "batch_sizes": batch_sizes, "golden": {"inputs": golden, "outputs": run_direct(model, _fp32(golden)),
                                                     "atol": 1e-5, "rtol": 1e-5}}
    return write_bundle(out, fields, {"model.onnx": model}, pem)


def _fp32(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def _linear_bundle(tmp_path: Path, pem: bytes, models: dict[str, Path], model_name: str = "linear",
                   url: str | None = None, model_card: dict[str, Any] | None = None) -> Path:
    return _bundle(tmp_path / f"bundle-{model_name}", pem, models["linear"], model_name, model_card or card(),
                   "test_task", golden_inputs(), [1, 16], url)


def _site(registry: Registry, *endpoints: str, max_inflight: int = 2) -> Registry:
    return Registry(registry.root, registry.trusted_keys_dir, triton_endpoints=endpoints,
                    triton_max_inflight=max_inflight, triton_timeout=10.0)


# ---------------------------------------------------------------------- one batch, both protocols


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_engine_matches_onnxruntime(tmp_path: Path, registry: Registry, vendor_pem: bytes,
                                           models: dict[str, Path], servers: list[TritonServer], protocol: str) -> None:
    url = servers[0].grpc_url if protocol == "grpc" else servers[0].http_url
    site = _site(registry, url)
    site.install(_linear_bundle(tmp_path, vendor_pem, models), "tester")
    site.activate("test_task", "1.0", "tester")
    x = np.random.default_rng(5).standard_normal((6, IN_FEATURES)).astype(np.float32)
    with site.load_active("test_task") as engine:
        assert engine.backend == "triton"
        out = engine.infer({"x": x})["y"]
        [state] = [s for s in endpoint_states() if s.url == url]
        assert state.healthy and state.requests >= 1 and state.errors == 0
    np.testing.assert_allclose(out, run_direct(models["linear"], {"x": x})["y"], rtol=0, atol=1e-6)


def test_bundle_url_serves_when_the_site_names_no_endpoint(tmp_path: Path, registry: Registry, vendor_pem: bytes,
                                                            models: dict[str, Path], servers: list[TritonServer]) -> None:
    bundle = _linear_bundle(tmp_path, vendor_pem, models, url=servers[1].http_url)
    assert registry.install(bundle, "tester").version == "1.0"


# ---------------------------------------------------------------------- refused at install


@pytest.mark.parametrize(
    ("model_name", "model_card", "reason"),
    [
        ("linear_wrong", None, r"does not match the model card: the server's inputs are \['features'\], the card's \['x'\]"),
        ("linear", {"inputs": [{"name": "x", "shape": ["N", IN_FEATURES], "dtype": "float16"}],
                    "outputs": card()["outputs"]}, r"input 'x' is FP32 on the server, FP16 \(float16\) on the card"),
        ("linear", {"inputs": card()["inputs"], "outputs": [{"name": "y", "shape": ["N", 4], "dtype": "float32"}]},
         r"output 'y' has shape \[-1, 3\] on the server, \['N', 4\] on the card"),
        ("nope", None, r"no Triton endpoint serving model 'nope' is healthy .*not ready"),
    ],
)
def test_model_not_matching_the_card_is_refused_at_install(
    tmp_path: Path, registry: Registry, vendor_pem: bytes, models: dict[str, Path], servers: list[TritonServer],
    model_name: str, model_card: dict[str, Any] | None, reason: str,
) -> None:
    site = _site(registry, servers[0].grpc_url, servers[1].grpc_url)
    golden = golden_inputs()
    if model_card is not None and model_card["inputs"][0]["dtype"] == "float16":
        golden = {"x": golden["x"].astype(np.float16)}
    bundle = _bundle(tmp_path / "b", vendor_pem, models["linear"], model_name, model_card or card(), "test_task",
                     golden, [1, 16])
    with pytest.raises((BundleRejected, EngineUnavailable), match=reason):
        site.install(bundle, "tester")
    assert site.list() == []


def test_a_server_whose_model_answers_differently_is_refused_at_install(
    tmp_path: Path, registry: Registry, vendor_pem: bytes, models: dict[str, Path], servers: list[TritonServer],
) -> None:
    """Same names, datatypes and shapes, other weights: only the golden set, run on each server, can tell."""
    other = linear_model(tmp_path / "other.onnx", seed=5)
    site = _site(registry, servers[0].grpc_url, servers[1].http_url)
    bundle = _bundle(tmp_path / "b", vendor_pem, other, "linear", card(), "test_task", golden_inputs(), [1, 16])
    with pytest.raises(BundleRejected, match=r"golden set failed on grpc://127\.0\.0\.1:\d+: output 'y' differs"):
        site.install(bundle, "tester")
    assert site.list() == []


def test_unreachable_pool_refuses_install_and_load_is_unavailable(tmp_path: Path, registry: Registry,
                                                                  vendor_pem: bytes, models: dict[str, Path]) -> None:
    closed = [f"grpc://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    site = _site(registry, *closed)
    bundle = _linear_bundle(tmp_path, vendor_pem, models)
    with pytest.raises(EngineUnavailable, match="no Triton endpoint serving model 'linear' is healthy"):
        site.install(bundle, "tester")
    assert site.list() == []
    verified = verify_directory(bundle, registry.trusted_keys_dir)
    from engines.backends import load_engine

    with pytest.raises(EngineUnavailable, match=r"127\.0\.0\.1"):
        load_engine(verified.root, verified.manifest, triton_endpoints=closed)


def test_golden_set_runs_on_every_endpoint(tmp_path: Path, registry: Registry, vendor_pem: bytes,
                                           models: dict[str, Path], servers: list[TritonServer]) -> None:
    site = _site(registry, servers[0].grpc_url, servers[1].http_url)
    site.install(_linear_bundle(tmp_path, vendor_pem, models), "tester")
    served = {s.url: s.requests for s in endpoint_states()}
    assert served == {}  # the install's engine is closed: its pool is gone
    verified = site.verify_installed("test_task", "1.0")
    from engines.backends import load_engine

    with load_engine(verified.root, verified.manifest, triton_endpoints=[servers[0].grpc_url, servers[1].http_url]) as e:
        runs = e.infer_each(golden_inputs())  # type: ignore[attr-defined]
    assert sorted(runs) == sorted([servers[0].grpc_url, servers[1].http_url])


def test_triton_section_of_the_configuration() -> None:
    config = parse_config({"triton": {"endpoints": ["grpc://gpu1.example:8001", "http://gpu2.example:8000"],
                                      "max_inflight": 2, "timeout_seconds": 5}})
    assert config.engine_options == {"triton_endpoints": ("grpc://gpu1.example:8001", "http://gpu2.example:8000"),
                                     "triton_max_inflight": 2, "triton_timeout": 5.0}
    with pytest.raises(ConfigError, match=r"triton.endpoints.*'gpu1:8001' must look like grpc://HOST:PORT"):
        parse_config({"triton": {"endpoints": ["gpu1:8001"]}})
    with pytest.raises(ConfigError, match=r"triton.max_inflight"):
        parse_config({"triton": {"max_inflight": 0}})


def test_endpoint_state_on_the_dashboard_and_in_metrics(tmp_path: Path, registry: Registry, vendor_pem: bytes,
                                                       models: dict[str, Path], servers: list[TritonServer]) -> None:
    from fastapi.testclient import TestClient

    from appliance.web.app import create_app

    closed = f"grpc://127.0.0.1:{free_port()}"
    config = parse_config({"node": {"data_dir": str(tmp_path / "var")},
                           "triton": {"endpoints": [servers[0].grpc_url, closed], "max_inflight": 2}})
    site = Registry(registry.root, registry.trusted_keys_dir, **config.engine_options)
    site.install(_linear_bundle(tmp_path, vendor_pem, models), "tester")
    site.activate("test_task", "1.0", "tester")
    store = StateStore(tmp_path / "state.db")
    try:
        with site.load_active("test_task") as engine, TestClient(create_app(config, store)) as client:
            engine.infer({"x": golden_inputs()["x"]})
            page = client.get("/").text
            metrics = client.get("/metrics").text
    finally:
        store.close()
    assert "Triton endpoints" in page and servers[0].grpc_url in page and closed in page
    assert "Connection refused" in page or "failed to connect" in page
    assert f'appliance_triton_endpoint_healthy{{endpoint="{servers[0].grpc_url}",model="linear"}} 1.0' in metrics
    assert f'appliance_triton_endpoint_healthy{{endpoint="{closed}",model="linear"}} 0.0' in metrics
    assert f'appliance_triton_endpoint_requests_total{{endpoint="{servers[0].grpc_url}",model="linear"}} 1.0' in metrics


def test_a_hung_server_times_out_and_its_batch_goes_to_the_other(
    tmp_path: Path, registry: Registry, vendor_pem: bytes, models: dict[str, Path], servers: list[TritonServer],
) -> None:
    import os
    import signal

    site = Registry(registry.root, registry.trusted_keys_dir, triton_timeout=2.0,
                    triton_endpoints=(servers[0].grpc_url, servers[1].grpc_url))
    site.install(_linear_bundle(tmp_path, vendor_pem, models), "tester")
    site.activate("test_task", "1.0", "tester")
    x = np.random.default_rng(3).standard_normal((4, IN_FEATURES)).astype(np.float32)
    want = run_direct(models["linear"], {"x": x})["y"]
    with site.load_active("test_task") as engine:
        assert servers[0].process is not None
        os.killpg(servers[0].process.pid, signal.SIGSTOP)  # alive but silent: only a deadline finds out
        try:
            outs = [engine.infer({"x": x})["y"] for _ in range(3)]
        finally:
            os.killpg(servers[0].process.pid, signal.SIGCONT)
        states = {s.url: s for s in engine.pool.states()}  # type: ignore[attr-defined]
    for out in outs:
        np.testing.assert_allclose(out, want, atol=1e-6)
    assert not states[servers[0].grpc_url].healthy and "Deadline" in states[servers[0].grpc_url].last_error
    assert states[servers[1].grpc_url].requests == 3


def test_a_server_back_with_a_different_model_stays_out(
    tmp_path: Path, registry: Registry, vendor_pem: bytes, models: dict[str, Path], servers: list[TritonServer],
) -> None:
    """Server 1 is down at load; it comes back serving other weights: the probe's golden set keeps it out."""
    site = _site(registry, servers[0].grpc_url, servers[1].grpc_url)
    bundle = _linear_bundle(tmp_path, vendor_pem, models, model_name="linear_b")
    with pytest.raises(BundleRejected, match=r"golden set failed on grpc://127\.0\.0\.1:\d+: output 'y' differs"):
        site.install(bundle, "tester")  # both up: server 1 answers differently
    servers[1].kill()
    site.install(bundle, "tester")
    site.activate("test_task", "1.0", "tester")
    x = golden_inputs()["x"]
    with site.load_active("test_task") as engine:
        _start(servers)
        pool = engine.pool  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
        while True:  # a loaded machine may refuse the first probe or two: wait for the golden set's verdict
            pool.endpoints[1].retry_at = 0.0  # due for its probe now rather than after the backoff
            np.testing.assert_allclose(engine.infer({"x": x})["y"], run_direct(models["linear"], {"x": x})["y"],
                                       atol=1e-6)
            state = {s.url: s for s in pool.states()}[servers[1].grpc_url]
            if state.healthy or "golden set failed" in state.last_error or time.monotonic() > deadline:
                break
    assert not state.healthy and "golden set failed" in state.last_error, state


# ---------------------------------------------------------------------- a slide through the pool


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.synthetic.slide import make_slide, write_tiff

    return write_tiff(make_slide(3, 2048, 2048, True), tmp_path_factory.mktemp("slide") / "slide.tiff")


@pytest.fixture
def pathology(tmp_path: Path, registry: Registry, vendor_pem: bytes, models: dict[str, Path],
              servers: list[TritonServer]) -> Registry:
    """The tiny tile and slide engines installed as Triton bundles on both servers (golden set on each)."""
    return _install_pathology(tmp_path, registry, vendor_pem, models, servers)


@pytest.fixture
def pathology_any(tmp_path: Path, registry: Registry, vendor_pem: bytes, models: dict[str, Path],
                  _pair: list[TritonServer]) -> Registry:
    """The same, with one server possibly down (a test before killed it): the pool does without it."""
    if all(s.process is None for s in _pair):
        _start(_pair)
    return _install_pathology(tmp_path, registry, vendor_pem, models, _pair)


def _pool_urls(servers: list[TritonServer]) -> list[str]:
    """One server over gRPC, the other over HTTP with binary tensors: failover across both protocols."""
    return [servers[0].grpc_url, servers[1].http_url]


def _install_pathology(tmp_path: Path, registry: Registry, vendor_pem: bytes, models: dict[str, Path],
                       servers: list[TritonServer]) -> Registry:
    site = _site(registry, *_pool_urls(servers))
    tile_golden = {"image": np.random.default_rng(1).random((2, 3, TILE, TILE), np.float32)}
    slide_golden = {"embeddings": np.random.default_rng(2).random((5, DIM), np.float32)}
    for task, name, model_card, golden, sizes in (
        ("pathology_tile", "tile", TILE_CARD, tile_golden, [1, 64]),
        ("pathology_slide", "slide", SLIDE_CARD, slide_golden, [1, 65536]),
    ):
        site.install(_bundle(tmp_path / task, vendor_pem, models[name], name, model_card, task, golden, sizes), "t")
        site.activate(task, "1.0", "tester")
    return site


class Recorder:
    """Wraps an engine and keeps every output it returned (the tile embeddings, in order)."""

    def __init__(self, engine: Any, on_call: Any = None) -> None:
        self.engine, self.manifest, self.batch_sizes = engine, engine.manifest, engine.batch_sizes
        self.outputs: list[dict[str, np.ndarray]] = []
        self.on_call = on_call

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.on_call is not None:
            self.on_call(len(self.outputs))
        out = self.engine.infer(inputs)
        self.outputs.append(out)
        return out


def _local(registry: Registry, task: str) -> OnnxRuntimeEngine:
    """The same bundle's ONNX model on local ONNX Runtime: the reference."""
    bundle = registry.verify_installed(task, "1.0")
    return OnnxRuntimeEngine(bundle.root, bundle.manifest, cpu_threads=1)


def _run(path: Path, tile: Any, slide: Any) -> tuple[np.ndarray, float, np.ndarray]:
    from appliance.pathology.pipeline import PathologySettings, run_slide_file

    recorder = Recorder(tile) if not isinstance(tile, Recorder) else tile
    result = run_slide_file(path, recorder, slide, job_id="job-1", settings=PathologySettings(batch_size=16))
    [finding] = result.findings
    embeddings = np.concatenate([o["embedding"] for o in recorder.outputs])
    assert finding.heat_map is not None
    return embeddings, finding.probability, finding.heat_map.scores


def test_slide_through_two_servers_matches_local_and_survives_a_kill(
    pathology: Registry, slide_file: Path, servers: list[TritonServer],
) -> None:
    ref_emb, ref_p, ref_heat = _run(slide_file, _local(pathology, "pathology_tile"), _local(pathology, "pathology_slide"))
    with pathology.load_active("pathology_tile") as tile, pathology.load_active("pathology_slide") as slide:
        emb, p, heat = _run(slide_file, tile, slide)
        assert np.max(np.abs(emb - ref_emb)) <= 1e-5 and abs(p - ref_p) <= 1e-5
        np.testing.assert_allclose(heat, ref_heat, atol=1e-5, equal_nan=True)

        killed: list[str] = []

        def kill_the_busy_one(calls: int) -> None:
            if calls == 2 and not killed:  # mid-slide: kill -9 whichever server answered the tiles so far
                states = {s.url: s for s in tile.pool.states()}  # type: ignore[attr-defined]
                urls = _pool_urls(servers)
                busy = max(range(2), key=lambda i: states[urls[i]].requests)
                servers[busy].kill()
                killed.append(urls[busy])

        emb2, p2, heat2 = _run(slide_file, Recorder(tile, kill_the_busy_one), slide)
        assert killed and len(emb2) == len(ref_emb)
        assert np.max(np.abs(emb2 - ref_emb)) <= 1e-5 and abs(p2 - ref_p) <= 1e-5
        states = {s.url: s for s in tile.pool.states()}  # type: ignore[attr-defined]
        assert not states[killed[0]].healthy and states[killed[0]].errors >= 1
        assert "refused" in states[killed[0]].last_error.lower()


def test_both_servers_down_job_waits_in_the_queue_and_completes_after_restart(
    tmp_path: Path, pathology_any: Registry, slide_file: Path, _pair: list[TritonServer],
) -> None:
    pathology, servers = pathology_any, _pair
    from appliance.pathology.pipeline import PathologySettings, run_slide_file

    ref = _run(slide_file, _local(pathology, "pathology_tile"), _local(pathology, "pathology_slide"))[1]
    scores: list[float] = []

    def pipeline(job: Job, store: StateStore, engines: EngineCache, progress: ProgressFn) -> Any:
        result = run_slide_file(slide_file, engines.get("pathology_tile"), engines.get("pathology_slide"),
                                job_id=job.id, progress=progress, settings=PathologySettings(batch_size=16))
        scores.append(result.findings[0].probability)
        return result

    store = StateStore(tmp_path / "state.db")
    queue = JobQueue(store, lease_seconds=60, max_attempts=2)
    engines = EngineCache(pathology, cpu_threads=1)
    worker = Worker(store, queue, {"pathology": pipeline}, lambda result, job: [], lambda job, files: 0, engines,
                    unavailable_delay=0.0)
    try:
        first, _ = queue.enqueue("pathology", "1.2.3", ["1.2.3.4"])
        assert worker.run_once() is not None and queue.get(first).state == "succeeded"  # engines loaded, cached
        for server in servers:
            server.kill()
        second, _ = queue.enqueue("pathology", "1.2.3", ["1.2.3.5"])
        for _ in range(3):  # more runs than max_attempts: waiting for the engine is not a failed attempt
            assert worker.run_once() is not None
            job = queue.get(second)
            assert job.state == "queued" and job.attempts == 0, (job.state, job.reason)
            assert "engine unavailable, waiting" in job.reason and "no Triton endpoint" in job.reason
        _start(servers)
        deadline = time.monotonic() + 120  # the pool probes each server back in after its backoff
        while queue.get(second).state != "succeeded" and time.monotonic() < deadline:
            assert worker.run_once() is not None  # deferred for 0 s: leased again each time until a server is back
            time.sleep(0.5)
        assert queue.get(second).state == "succeeded", queue.get(second).reason
    finally:
        engines.close()
        store.close()
    assert len(scores) == 2 and abs(scores[1] - ref) <= 1e-5


def test_infer_many_keeps_batches_in_flight_on_both_servers_in_order(
    pathology: Registry, servers: list[TritonServer],
) -> None:
    rng = np.random.default_rng(9)
    batches = [{"image": rng.random((8, 3, TILE, TILE), np.float32)} for _ in range(12)]
    local = _local(pathology, "pathology_tile")
    want = [local.infer(b)["embedding"] for b in batches]
    with pathology.load_active("pathology_tile") as tile:
        got = [o["embedding"] for o in tile.infer_many(iter(batches))]
        served = {s.url: s.requests for s in tile.pool.states()}  # type: ignore[attr-defined]
        assert all(n >= 1 for n in served.values()), served  # the least-loaded endpoint gets each batch
        for i, out in enumerate(tile.infer_many(batches)):
            if i == 3:
                servers[1].kill()  # kill -9 of the HTTP one while batches are in flight: resent to the other
            np.testing.assert_allclose(out["embedding"], want[i], atol=1e-5)
        http = [st for st in tile.pool.states() if st.url == servers[1].http_url]  # type: ignore[attr-defined]
        assert not http[0].healthy and http[0].errors >= 1, http
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
