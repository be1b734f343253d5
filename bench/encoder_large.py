"""A ViT-L/16 tile encoder (UNI's shape, ~300 M parameters, random weights) within the appliance's memory.

    .venv/bin/python bench/encoder_large.py [--model vit-l16] [--precisions fp32,fp16] [--batches 1,2]
                                            [--threads 2] [--seconds 10] [--tile 224]

Exports the encoder to ONNX (weights as external data beside ``model.onnx``), frees
the torch copy, optionally converts to fp16 (LayerNorm / Softmax / residual adds
fp32, as the export does), then runs each precision in ONNX Runtime at the given
batch sizes in a fresh process (as the appliance does: no torch, no exporter's
leftovers), so its peak RSS is the serving figure. Prints tiles/s, cosine to fp32,
current and peak RSS after every stage, and the size of the files on disk.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB (VmRSS, VmHWM: unlike ru_maxrss, the peak
    starts afresh at exec, so a child's is its own, not its parent's inherited one)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024.0, int(status["VmHWM"].split()[0]) / 1024.0


def report(stage: str, started: float) -> None:
    current, peak = rss_mib()
    print(f"  {stage:<34} {time.perf_counter() - started:7.1f} s   RSS {current:7,.0f} MiB   peak {peak:7,.0f} MiB", flush=True)


def session(path: Path, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def rate(run, batch: np.ndarray, seconds: float) -> float:  # type: ignore[no-untyped-def]
    run(batch)  # warm-up
    done, start = 0, time.perf_counter()
    while done < 2 * len(batch) or time.perf_counter() - start < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def serve(path: Path, reference_path: Path, batches: list[int], threads: int, seconds: float) -> None:
    """Load ``path`` in ONNX Runtime, time it at each batch size, compare its embeddings with the fp32 reference."""
    started = time.perf_counter()
    images = np.load(path.parents[1] / "images.npy")
    s = session(path, threads)
    report("session loaded", started)
    out = s.run(None, {"image": images})[0]
    if not reference_path.exists():
        np.save(reference_path, out)
    reference = np.load(reference_path)
    cosine = (reference * out).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(out, axis=1))
    for b in batches:
        tiles_per_s = rate(lambda x: s.run(None, {"image": x})[0], images[:b], seconds)
        report(f"batch {b}: {tiles_per_s:.2f} tiles/s, cos min {float(cosine.min()):.5f}", started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-l16")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--serve", type=Path, help="(internal) run this model file, in this process")
    parser.add_argument("--reference", type=Path, help="(internal) fp32 embeddings, written by the first --serve")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.reference, [int(b) for b in args.batches.split(",")], args.threads, args.seconds)
        return
    import torch  # the exporting process only: the serving one runs without torch, as the appliance does

    from export.fp16 import convert_fp16
    from export.models.vit import VisionTransformer, preset
    from export.onnx_export import export_onnx, model_files

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    images = np.random.default_rng(0).standard_normal((max(batches), 3, args.tile, args.tile)).astype(np.float32)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-encoder-large-") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        model = VisionTransformer(preset(args.model, tile_size=args.tile)).eval()
        params = sum(p.numel() for p in model.parameters())
        print(f"{args.model}: {params / 1e6:.1f} M parameters ({params * 4 / 2**30:.2f} GiB fp32), {args.tile} px, "
              f"{args.threads} threads (random weights)", flush=True)
        report("model built", started)
        fp32 = work / "fp32" / "model.onnx"
        export_onnx(model, {"image": torch.from_numpy(images[:1])}, ("embedding",), {"image": {0: "batch"}}, fp32)
        del model
        gc.collect()
        report("exported to ONNX fp32, torch freed", started)
        paths = {"fp32": fp32}
        if "fp16" in args.precisions.split(","):
            paths["fp16"] = work / "fp16" / "model.onnx"
            convert_fp16(fp32, paths["fp16"], sample=[{"image": images[:1]}], residual_fp32=True)
            gc.collect()
            report("converted to fp16", started)
        np.save(work / "images.npy", images)
        for precision, path in paths.items():
            files = model_files(path)
            print(f"  {precision}: {', '.join(f.name for f in files)} ({sum(f.stat().st_size for f in files) / 2**20:,.0f} MiB)"
                  " -- served in a fresh process:", flush=True)
            subprocess.run([sys.executable, __file__, "--serve", str(path), "--reference", str(work / "reference.npy"),
                            "--batches", args.batches, "--threads", str(args.threads), "--seconds", str(args.seconds)],
                           check=True)  # fmt: skip
    current, peak = rss_mib()
    print(f"peak RSS of the whole run: {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
