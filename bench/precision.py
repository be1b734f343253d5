"""Pathology tile model on ONNX Runtime CPU at batch 64: tiles/s per precision, with AUC and agreement.

    .venv/bin/python bench/precision.py [--quick] [--threads 2] [--seconds 5]

One run measures torch eager, ONNX fp32, fp16 and int8 (the Q/DQ graph the export
writes, placed for TensorRT: Q/DQ on the inputs of Conv/Gemm and residual Adds, none
on Conv outputs). Ratios are against ONNX fp32 in the same run. Demo model, not for
clinical use.

For scale, one more row: the same model quantized the way ONNX Runtime's CPU kernels
like best (QOperator QLinearConv, uint8 activations with zero points, int8 weights),
which TensorRT cannot build. It shows what int8 can gain on this CPU at all; it is not
an engine the export writes: without AVX-512 VNNI, ONNX Runtime's int8 convolutions gain little.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.demo import DEMO_GATE, task_specs  # noqa: E402
from export.gate import evaluate, roc_auc  # noqa: E402
from export.pipeline import convert_task, run_feeds  # noqa: E402
from export.train import QUICK_SIZES, DemoSizes, save_checkpoint, train_demo_models  # noqa: E402

BATCH = 64


def _ort_session(path: Path, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cpu_int8(fp32: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """The int8 model ONNX Runtime's CPU kernels run fastest (not TensorRT-legal; for scale only)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from export.int8 import _Reader

    out.mkdir(parents=True, exist_ok=True)
    quant_pre_process(str(fp32), str(out / "prepared.onnx"), skip_symbolic_shape=True)
    quantize_static(str(out / "prepared.onnx"), str(out / "model.onnx"), _Reader(calibration),
                    quant_format=QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out / "model.onnx"


def _rate(run, seconds: float) -> float:  # type: ignore[no-untyped-def]
    run()  # warm-up
    run()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        run()
        count += 1
    return count * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and data (seconds, not minutes)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per engine")
    parser.add_argument("--cache", type=Path, default=Path("var/bench-precision"), help="trained weights are kept here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = QUICK_SIZES if args.quick else DemoSizes()
    checkpoint = args.cache / ("quick.pt" if args.quick else "demo.pt")
    models = train_demo_models(sizes, checkpoint=checkpoint if checkpoint.exists() else None)
    if not checkpoint.exists():
        save_checkpoint(models, checkpoint)
    spec = task_specs(models)["pathology_tile"]
    report = convert_task(spec, args.cache / "work", ("fp32", "fp16", "int8"), DEMO_GATE)
    paths = {p: r.model for p, r in report.results.items()}
    paths["cpu-int8"] = _cpu_int8(paths["fp32"], args.cache / "work" / "cpu-int8", spec.calibration)
    probabilities = {p: run_feeds(path, spec.heldout.feeds, spec.score)[0] for p, path in paths.items()}
    metrics = evaluate(spec.heldout.labels, probabilities, spec.threshold, DEMO_GATE)

    images = np.concatenate([f["image"] for f in spec.heldout.feeds])
    batch = np.resize(images, (BATCH, *images.shape[1:])).astype(np.float32)
    torch.set_num_threads(args.threads)
    tensor = torch.from_numpy(batch)

    def eager() -> None:
        with torch.no_grad():
            models.tile(tensor)

    rates = {"torch eager": _rate(eager, args.seconds)}
    labels = {"fp32": "onnx fp32", "fp16": "onnx fp16", "int8": "onnx int8 (Q/DQ)", "cpu-int8": "ort-cpu int8 *"}
    for key, path in paths.items():
        session = _ort_session(path, args.threads)
        rates[labels[key]] = _rate(lambda s=session: s.run(None, {"image": batch}), args.seconds)
    base = rates["onnx fp32"]
    tile = models.sizes.tile
    print(f"pathology tile encoder ({tile.tile_size} px, width {tile.width}, depth {tile.depth}), batch {BATCH}, "
          f"{args.threads} threads, ONNX Runtime CPU; {len(spec.heldout.labels)} held-out tiles; demo model, not for clinical use")
    print(f"{'engine':<20} {'tiles/s':>9} {'x fp32':>7} {'AUC':>7} {'agree':>8} {'max|dp|':>8}")
    fp32_auc = roc_auc(spec.heldout.labels, probabilities["fp32"])
    keys = {"torch eager": None, "onnx fp32": "fp32", "onnx fp16": "fp16", "onnx int8 (Q/DQ)": "int8",
            "ort-cpu int8 *": "cpu-int8"}
    for name, rate in rates.items():
        m = metrics[keys[name] or "fp32"]
        print(f"{name:<20} {rate:9.1f} {rate / base:7.2f} {m.auc:7.4f} {m.agreement:8.2%} {m.max_probability_diff:8.4f}")
    int8 = metrics["int8"]
    print(f"goal int8 >= 2x fp32: {rates['onnx int8 (Q/DQ)'] / base:.2f}x; AUC drop {fp32_auc - int8.auc:.4f} "
          f"(goal <= 0.005); agreement {int8.agreement:.2%} (goal >= 99%)")
    print(f"* int8 in the form ONNX Runtime's CPU kernels run fastest (QOperator, uint8 activations; "
          f"TensorRT cannot build it): "
          f"{rates['ort-cpu int8 *'] / base:.2f}x fp32")


if __name__ == "__main__":
    main()
