"""ViT tile encoders on this CPU: tiles/s per runtime and precision, embedding cosine to fp32, peak RSS.

    .venv/bin/python bench/encoders.py [--models vit-s16,vit-b16] [--tile 224] [--batch 16] [--threads 2]
                                       [--seconds 10] [--train-tiles 256] [--train-size 64] [--quick]

Per model (full depth, random weights, 224 px, batch 16): torch eager, ONNX Runtime
fp32 (the plain export), fp32 with ONNX Runtime's transformer fusions (the CPU
bundle), fp16 (mixed precision, LayerNorm / Softmax / residual adds fp32), int8 as
the export writes it (``export.int8.TRANSFORMER_INT8``: TensorRT-legal Q/DQ on every
MatMul input but attention's probabilities @ V and the first block's qkv, symmetric,
per-channel weights) and int8 the way ONNX Runtime's CPU kernels prefer (dynamic
quantization: MatMulInteger with per-batch activation ranges; not TensorRT-legal).
Ratios are against ONNX Runtime fp32 in the same run. Cosine is measured on tiles
cut from synthetic slides; random weights are no measure of accuracy, so one more
table gives the cosine of a ViT-S/16 trained here on synthetic tiles (demo model,
not for clinical use). Peak RSS is the process's high-water mark after each row.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.encoder import normalize, slide_tiles  # noqa: E402
from export.fp16 import convert_fp16  # noqa: E402
from export.gate import cosine_to_reference  # noqa: E402
from export.int8 import TRANSFORMER_INT8, quantize_int8  # noqa: E402
from export.models.vit import VisionTransformer, VitConfig, preset  # noqa: E402
from export.onnx_export import export_onnx, optimize_for_ort_cpu  # noqa: E402
from export.train import train_demo_vit  # noqa: E402

Row = tuple[str, float, float, float, float]  # (name, tiles/s, cosine mean, cosine p1, peak RSS MiB)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _session(path: Path, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not steal torch's cores
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _rate(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, seconds: float) -> float:
    run(batch)  # warm-up
    done, start = 0, time.perf_counter()
    while done < 2 * len(batch) or time.perf_counter() - start < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def _embed(run: Callable[[np.ndarray], np.ndarray], tiles: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([run(tiles[i : i + batch]) for i in range(0, len(tiles), batch)])


def _dynamic_int8(fp32: Path, out: Path) -> Path:
    """ONNX Runtime's preferred CPU int8 for transformers: dynamic quantization (MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.parent.mkdir(parents=True, exist_ok=True)
    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return out


def build_variants(model: VisionTransformer, work: Path, calibration: np.ndarray, batch: int) -> dict[str, Path]:
    """Every ONNX variant of ``model`` under ``work``."""
    cfg = model.config
    sample = {"image": torch.from_numpy(calibration[:2])}
    paths = {"onnx fp32": work / "fp32" / "model.onnx"}
    export_onnx(model, sample, ("embedding",), {"image": {0: "batch"}}, paths["onnx fp32"])
    feeds = [{"image": calibration[i : i + batch]} for i in range(0, len(calibration), batch)]
    paths["onnx fp32 fused"] = work / "fused" / "model.onnx"
    optimize_for_ort_cpu(paths["onnx fp32"], paths["onnx fp32 fused"], cfg.num_heads, cfg.embed_dim, feeds[:1])
    paths["onnx fp16"] = work / "fp16" / "model.onnx"
    convert_fp16(paths["onnx fp32"], paths["onnx fp16"], sample=[{"image": calibration[:4]}], residual_fp32=True)
    paths["int8 Q/DQ (TensorRT)"] = work / "int8" / "model.onnx"
    quantize_int8(paths["onnx fp32"], paths["int8 Q/DQ (TensorRT)"], feeds, TRANSFORMER_INT8)
    paths["int8 dynamic (ORT)"] = _dynamic_int8(paths["onnx fp32"], work / "dynamic" / "model.onnx")
    return paths


def measure(model: VisionTransformer, tiles: np.ndarray, calibration: np.ndarray, args: argparse.Namespace,
            work: Path, speed: bool = True) -> list[Row]:
    """One row per runtime/precision: tiles/s on a batch, embedding cosine to ONNX fp32, peak RSS so far."""
    paths = build_variants(model, work, calibration, args.batch)
    batch = tiles[: args.batch]
    rows: list[Row] = []
    reference: np.ndarray | None = None

    @torch.no_grad()
    def eager(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).numpy()

    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {"torch eager": eager}
    for name, path in paths.items():
        session = _session(path, args.threads)
        runners[name] = lambda x, s=session: s.run(None, {"image": x})[0]
    reference = _embed(runners["onnx fp32"], tiles, args.batch)
    for name, run in runners.items():
        rate = _rate(run, batch, args.seconds) if speed else float("nan")
        cosine = cosine_to_reference(reference, _embed(run, tiles, args.batch))
        rows.append((name, rate, float(cosine.mean()), float(np.percentile(cosine, 1)), peak_rss_mib()))
        print(f"  {name:<24} {rate:8.2f} tiles/s  cosine {cosine.mean():.5f}  peak RSS {peak_rss_mib():,.0f} MiB", flush=True)
    return rows


def print_table(title: str, rows: list[Row]) -> None:
    fp32 = next(r[1] for r in rows if r[0] == "onnx fp32")
    print(f"\n{title}")
    print(f"{'runtime / precision':<24} {'tiles/s':>8} {'x fp32':>7} {'cos mean':>9} {'cos p1':>8} {'peak RSS MiB':>13}")
    for name, rate, mean, p1, rss in rows:
        print(f"{name:<24} {rate:8.2f} {rate / fp32:7.2f} {mean:9.5f} {p1:8.5f} {rss:13,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit-s16,vit-b16")
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tiles", type=int, default=64, help="tiles (from synthetic slides) the cosine is measured on")
    parser.add_argument("--train-tiles", type=int, default=256, help="0: skip the trained ViT-S accuracy table")
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="2-block models, 64 px, 1 s per row (smoke test)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.tile, args.seconds, args.tiles, args.train_tiles, args.batch = 64, 1.0, 16, 32, 8

    def tiles_for(config: VitConfig, count: int, seed: int) -> np.ndarray:
        slides = max(2, count // 8)
        raw, _ = slide_tiles(seed, slides, -(-count // slides), config.tile_size, config.mpp, max(768, 4 * config.tile_size))
        return normalize(raw[:count], config)

    with tempfile.TemporaryDirectory(prefix="bench-encoders-") as tmp:
        for name in [m for m in args.models.split(",") if m]:
            torch.manual_seed(0)
            config = preset(name, tile_size=args.tile, **({"depth": 2} if args.quick else {}))
            model = VisionTransformer(config).eval()
            print(f"\n{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
                  f"{args.tile} px, batch {args.batch}, {args.threads} threads (random weights)", flush=True)
            tiles = tiles_for(config, args.tiles, 11)
            calibration = tiles_for(config, 4 * args.batch, 12)
            rows = measure(model, tiles, calibration, args, Path(tmp) / name)
            print_table(f"{name} at {args.tile} px, batch {args.batch}, {args.threads} threads (random weights)", rows)
            del model
        if args.train_tiles:
            config = preset("vit-s16", tile_size=args.train_size, **({"depth": 2} if args.quick else {}))
            print(f"\ntraining vit-s16 at {args.train_size} px on {args.train_tiles} synthetic tiles "
                  "(demo model, not for clinical use)", flush=True)
            trained = train_demo_vit(config, tiles=args.train_tiles, epochs=2, progress=lambda m: print("  " + m, flush=True))
            torch.set_num_threads(args.threads)
            torch.use_deterministic_algorithms(False)
            rows = measure(trained, tiles_for(config, 4 * args.tiles, 13), tiles_for(config, 4 * args.batch, 14), args,
                           Path(tmp) / "trained", speed=False)
            print_table(f"demo-trained vit-s16 at {args.train_size} px: accuracy (cosine to fp32)", rows)
    print(f"\npeak RSS of the whole run: {peak_rss_mib():,.0f} MiB")


if __name__ == "__main__":
    main()
