"""A ViT-L/16 tile encoder (UNI's shape, ~300 M parameters, random weights) within the appliance's memory.

    .venv/bin/python bench/encoder_large.py [--model vit-l16] [--precisions fp32,fp16] [--batches 1,2]
                                            [--threads 2] [--seconds 10] [--tile 224]

Exports the encoder to ONNX (weights as external data beside ``model.onnx``), frees
the torch copy, optionally converts to fp16 (LayerNorm / Softmax / residual adds
fp32, as the export does), then runs each precision in ONNX Runtime at the given
batch sizes. Prints tiles/s, cosine to fp32, the process's current and peak RSS
after every stage, and the size of the files on disk.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

# run as a script, this folder leads sys.path, and bench/triton.py would shadow the triton package torch's ONNX
# exporter imports: drop the folder from the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.fp16 import convert_fp16  # noqa: E402
from export.gate import cosine_to_reference  # noqa: E402
from export.models.vit import VisionTransformer, preset  # noqa: E402
from export.onnx_export import export_onnx, model_files  # noqa: E402


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    current = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-l16")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tile", type=int, default=224)
    args = parser.parse_args()
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
        reference: np.ndarray | None = None
        for precision, path in paths.items():
            files = model_files(path)
            print(f"  {precision}: {', '.join(f.name for f in files)} ({sum(f.stat().st_size for f in files) / 2**20:,.0f} MiB)")
            s = session(path, args.threads)
            report(f"{precision} session loaded", started)
            out = s.run(None, {"image": images[:1]})[0]
            reference = out if reference is None else reference
            cosine = float(cosine_to_reference(reference, out).min())
            for b in batches:
                tiles_per_s = rate(lambda x, s=s: s.run(None, {"image": x})[0], images[:b], args.seconds)
                report(f"{precision} batch {b}: {tiles_per_s:.2f} tiles/s, cos {cosine:.5f}", started)
            del s
            gc.collect()
    current, peak = rss_mib()
    print(f"peak RSS of the whole run: {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
