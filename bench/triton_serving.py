"""Triton backend benchmark: a slide's tile-engine work through one real tritonserver against local ONNX Runtime.

    .venv/bin/python bench/triton_serving.py [--tiles N] [--batch B] [--threads T]

A child process exports the project's tile encoder (export.models.tile, 96 px
tiles, random weights) to ONNX; a synthetic slide (pyramidal TIFF) is cut into
its tissue tiles by the pathology pipeline (reader, tissue grid, tiler), and
those batches are kept. Then, in one run and on the same batches:

- local ONNX Runtime (the baseline, ``T`` intra-op threads),
- the Triton backend over gRPC and over HTTP with binary tensors
  (``TritonEngine.infer_many``, ``max_inflight`` 1, 2 and 4 on gRPC),
- the old client's JSON path (KServe v2 JSON number lists over httpx, one
  request at a time; a copy of it lives here only, for reference, on a few batches),

against one tritonserver (PyTriton, ``tests/triton_peer.py``) hosting the same
ONNX model on ONNX Runtime with ``T`` threads. Prints tiles/s, the ratio to
local, and the largest difference of the embeddings from local's.
Goal: gRPC >= 0.8x local on this machine (the server shares its cores, so this
measures the protocol's overhead; a site's servers add GPUs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TILE = 96
DIM = 128
KSERVE_DATATYPES = {"float32": "FP32"}


def prepare(root: Path, side: int) -> None:
    """Child process: the slide (TIFF) and the ONNX tile encoder (keeps torch out of this process)."""
    import torch

    from export.models.tile import TileConfig, TileEncoder
    from export.synthetic.slide import make_slide, write_tiff

    write_tiff(make_slide(21, side, side, True, blobs=8), root / "slide.tiff")
    torch.manual_seed(0)
    model = TileEncoder(TileConfig(tile_size=TILE, embed_dim=DIM)).eval()
    torch.onnx.export(model, (torch.zeros(2, 3, TILE, TILE),), str(root / "tile.onnx"), input_names=["image"],
                      output_names=["embedding"], dynamic_axes={"image": {0: "N"}, "embedding": {0: "N"}},
                      opset_version=18, dynamo=False)


def slide_batches(root: Path, batch: int) -> list[np.ndarray]:
    """The slide's tile batches as the pathology pipeline makes them (read, tissue grid, tile, normalize)."""
    from appliance.pathology.pipeline import PathologySettings, run_slide_file
    from tests.pathology.tiny_engines import MEAN, STD, TinyManifest

    batches: list[np.ndarray] = []

    class Keep:
        batch_sizes = range(1, 257)

        def __init__(self, manifest: TinyManifest) -> None:
            self.manifest = manifest

        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if "image" in inputs:
                batches.append(inputs["image"].copy())
                return {"embedding": np.zeros((inputs["image"].shape[0], DIM), np.float32)}
            n = inputs["embeddings"].shape[0]
            return {"probability": np.zeros(1, np.float32), "attention": np.full(n, 1 / n, np.float32),
                    "tile_scores": np.zeros(n, np.float32)}

    tile = Keep(TinyManifest("pathology_tile", {"tile_size": TILE, "mpp": 0.5, "mean": MEAN, "std": STD}))
    slide = Keep(TinyManifest("pathology_slide", {"threshold": 0.5}))
    run_slide_file(root / "slide.tiff", tile, slide, job_id="bench", settings=PathologySettings(batch_size=batch))
    return batches


def json_infer(url: str, model: str, x: np.ndarray) -> np.ndarray:
    """The old client's path (kept here only, for reference): KServe v2 JSON number lists over HTTP."""
    import httpx

    body = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "embedding"}]}
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=300)
    response.raise_for_status()
    out = response.json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def triton_engine(root: Path, url: str, max_inflight: int) -> Any:
    """The tile encoder as a signed Triton bundle, loaded on ``url`` (metadata checked against the card)."""
    from engines.backends import load_engine
    from engines.bundle import verify_directory, write_bundle
    from engines.signing import generate_keypair

    bundle = root / "bundle"
    if not bundle.exists():
        pair = generate_keypair(root / "keys", "bench")
        card = {"inputs": [{"name": "image", "shape": ["N", 3, TILE, TILE], "dtype": "float32"}],
                "outputs": [{"name": "embedding", "shape": ["N", DIM], "dtype": "float32"}]}
        x = np.zeros((1, 3, TILE, TILE), np.float32)
        write_bundle(bundle, {"task": "bench_tile", "version": "1", "precision": "fp32",
                              "backend": {"name": "triton", "model_name": "tile"}, "model_card": card,
                              "batch_sizes": [1, 64], "golden": {"inputs": {"image": x},
                                                                 "outputs": {"embedding": np.zeros((1, DIM), np.float32)}}},
                     {"model.onnx": root / "tile.onnx"}, pair.private_key.read_bytes())
    verified = verify_directory(bundle, root / "keys")
    return load_engine(verified.root, verified.manifest, triton_endpoints=[url], triton_max_inflight=max_inflight,
                       triton_timeout=120.0)


def timed(run: Any, batches: list[np.ndarray]) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = np.concatenate(list(run(batches)))
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=1500, help="about this many tissue tiles (default 1,500)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads, local and in the server")
    ap.add_argument("--json-batches", type=int, default=4, help="batches sent on the old JSON path")
    ap.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--side", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare, args.side)
        return
    side = max(1024, int((args.tiles / 0.3) ** 0.5 * TILE) // 256 * 256)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, __file__, "--prepare", str(root), "--side", str(side)], check=True)
        batches = slide_batches(root, args.batch)
        run(root, batches, args.threads, args.json_batches)


def run(root: Path, batches: list[np.ndarray], threads: int, json_batches: int) -> None:
    import onnxruntime as ort

    from tests.triton_peer import served_model, start_triton

    n = sum(b.shape[0] for b in batches)
    card = {"inputs": [{"name": "image", "shape": ["N", 3, TILE, TILE], "dtype": "float32"}],
            "outputs": [{"name": "embedding", "shape": ["N", DIM], "dtype": "float32"}]}
    server = start_triton(root / "server", [served_model("tile", root / "tile.onnx", card["inputs"], card["outputs"],
                                                         max_batch_size=64)], threads=threads)
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(root / "tile.onnx"), options, providers=["CPUExecutionProvider"])
        local = lambda bs: (session.run(["embedding"], {"image": b})[0] for b in bs)  # noqa: E731
        local(batches[:1]).__next__()  # warm-up
        rows: list[tuple[str, float, float]] = []
        t_local, ref = timed(local, batches)
        rows.append(("local ONNX Runtime", n / t_local, 0.0))
        for label, url, inflight in [("Triton gRPC, max_inflight 1", server.grpc_url, 1),
                                     ("Triton gRPC, max_inflight 2", server.grpc_url, 2),
                                     ("Triton gRPC, max_inflight 4", server.grpc_url, 4),
                                     ("Triton HTTP binary, max_inflight 4", server.http_url, 4)]:
            with triton_engine(root, url, inflight) as engine:
                next(engine.infer_many([{"image": batches[0]}]))  # warm-up, connections open
                t, out = timed(lambda bs, e=engine: (o["embedding"] for o in e.infer_many({"image": b} for b in bs)),
                               batches)
            rows.append((label, n / t, float(np.max(np.abs(out - ref)))))
        few = batches[:json_batches]
        t, out = timed(lambda bs: (json_infer(server.http_url, "tile", b) for b in bs), few)
        rows.append((f"old JSON path ({len(few)} batches)", sum(b.shape[0] for b in few) / t,
                     float(np.max(np.abs(out - ref[: out.shape[0]])))))
    finally:
        server.kill()
    print(f"{n} tissue tiles of {TILE} px in {len(batches)} batches; ONNX Runtime {threads} thread(s) "
          f"locally and in the server; {os.cpu_count()} CPUs shared by both")
    print(f"{'path':40s} {'tiles/s':>9s} {'vs local':>9s} {'max |diff|':>11s}")
    for label, rate, diff in rows:
        print(f"{label:40s} {rate:9.1f} {rate / rows[0][1]:8.2f}x {diff:11.2e}")


if __name__ == "__main__":
    main()
