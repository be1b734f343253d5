"""A slide's engine work on ONNX Runtime's CUDA execution provider, against its CPU provider.

    python3 bench/gpu/ort_cuda.py [--json FILE] [--tiles 4096] [--batch 64]

The project's tile encoder (export.models.tile, default configuration, seeded
random weights) and gated-attention MIL aggregator (export.models.mil) are
exported to ONNX; ``--tiles`` normalized 224 px tiles go through the encoder in
batches on the CUDA provider, then the embeddings through the aggregator: tiles/s
of the encoder, the slide's total time, and the largest difference from the CPU
provider on the first batch and on the slide score. Needs torch (export) and
onnxruntime with CUDAExecutionProvider (onnxruntime-gpu).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def export(root: Path) -> tuple[Path, Path]:
    import torch

    from export.models.mil import GatedAttentionMIL, MilConfig
    from export.models.tile import TileConfig, TileEncoder

    torch.manual_seed(0)
    tile, mil = root / "tile.onnx", root / "mil.onnx"
    torch.onnx.export(TileEncoder(TileConfig()).eval(), (torch.zeros(2, 3, 224, 224),), str(tile),
                      input_names=["image"], output_names=["embedding"],
                      dynamic_axes={"image": {0: "N"}, "embedding": {0: "N"}}, opset_version=18, dynamo=False)
    torch.onnx.export(GatedAttentionMIL(MilConfig()).eval(), (torch.zeros(5, MilConfig().embed_dim),), str(mil),
                      input_names=["embeddings"], output_names=["probability", "attention", "tile_scores"],
                      dynamic_axes={"embeddings": {0: "N"}, "attention": {0: "N"}, "tile_scores": {0: "N"}},
                      opset_version=18, dynamo=False)
    return tile, mil


def slide(tile: Any, mil: Any, tiles: np.ndarray, batch: int) -> tuple[float, np.ndarray, float]:
    """(encoder seconds, slide probability, total seconds) for all ``tiles`` on these sessions."""
    t0 = time.perf_counter()
    embeddings = [tile.run(None, {"image": tiles[i : i + batch]})[0] for i in range(0, len(tiles), batch)]
    t1 = time.perf_counter()
    probability = mil.run(None, {"embeddings": np.concatenate(embeddings)})[0]
    return t1 - t0, probability, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--tiles", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SystemExit(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider: {ort.get_available_providers()}")
    rng = np.random.default_rng(0)
    tiles = rng.standard_normal((args.tiles, 3, 224, 224), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tile_onnx, mil_onnx = export(Path(tmp))
        cuda = [ort.InferenceSession(str(p), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
                for p in (tile_onnx, mil_onnx)]
        cpu = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (tile_onnx, mil_onnx)]
    assert cuda[0].get_providers()[0] == "CUDAExecutionProvider", cuda[0].get_providers()
    slide(cuda[0], cuda[1], tiles[: 2 * args.batch], args.batch)  # warm-up: cuDNN algorithm search, allocations
    enc_s, prob_gpu, total_s = slide(cuda[0], cuda[1], tiles, args.batch)
    first = tiles[: args.batch]
    cpu_t = time.perf_counter()
    emb_cpu = cpu[0].run(None, {"image": first})[0]
    cpu_batch_s = time.perf_counter() - cpu_t
    emb_gpu = cuda[0].run(None, {"image": first})[0]
    _, prob_cpu, _ = slide(cpu[0], cpu[1], tiles[: 4 * args.batch], args.batch)
    _, prob_gpu_small, _ = slide(cuda[0], cuda[1], tiles[: 4 * args.batch], args.batch)
    result = {"onnxruntime": ort.__version__, "tiles": args.tiles, "batch": args.batch,
              "encoder_tiles_per_s": round(args.tiles / enc_s, 1), "slide_seconds": round(total_s, 3),
              "cpu_encoder_tiles_per_s": round(args.batch / cpu_batch_s, 1),
              "gpu_vs_cpu_encoder": round(cpu_batch_s / args.batch * args.tiles / enc_s, 1),
              "embedding_max_abs_diff": float(np.abs(emb_gpu - emb_cpu).max()),
              "slide_probability_abs_diff": float(np.abs(prob_gpu_small - prob_cpu).max()),
              "slide_probability": float(prob_gpu[0])}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
