"""The export pipeline: model -> ONNX fp32 -> fp16 and Q/DQ int8 -> accuracy gate -> signed bundles.

Each step reports through ``progress`` (the CLI shows it with Rich). The gate
runs before any bundle is written: a precision that misses it fails the whole
export with the table of numbers, and nothing is signed.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.cards import card_from_dict
from export.errors import ExportError
from export.fp16 import convert_fp16
from export.gate import GateConfig, PrecisionMetrics, enforce, evaluate, evaluate_embeddings
from export.int8 import Int8Settings, quantize_int8
from export.onnx_export import export_onnx, model_files, optimize_for_ort_cpu
from export.qdq_rules import check_qdq_model
from export.train import TaskData

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
#: golden-set tolerance per precision (same runtime, possibly another thread count)
GOLDEN_TOLERANCE = {"fp32": (1e-4, 1e-3), "fp16": (2e-3, 1e-2), "int8": (2e-3, 1e-2)}

Feed = dict[str, np.ndarray]
Progress = Callable[[str, str], None]  # (stage, message)
Count = Callable[[str, int, int], None]  # (stage, done, total): a progress bar


@dataclass
class EncoderGate:
    """How a tile encoder is gated: embedding cosine to fp32, and the slide score of each held-out slide."""

    bags: list[slice]  #: rows of the held-out tiles (feed order) that make up each slide
    aggregate: Callable[[np.ndarray], float]  #: one slide's embeddings -> its score (the fp32 aggregator)


@dataclass
class TaskExport:
    """Everything the pipeline needs to export one task."""

    task: str
    module: torch.nn.Module
    sample: dict[str, torch.Tensor]  #: example inputs for the exporter
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    model_card: dict[str, Any]
    batch_sizes: tuple[int, int]
    heldout: TaskData
    calibration: list[Feed]
    score: Callable[[list[np.ndarray]], np.ndarray]  #: model outputs of one feed -> probabilities
    threshold: float
    golden: Feed
    int8: Int8Settings = field(default_factory=Int8Settings)
    encoder_gate: EncoderGate | None = None  #: set for tile encoders: gate on embeddings and slide AUC
    transformer: tuple[int, int] | None = None  #: (heads, width) of a ViT: transformer FP16/INT8/ORT rules


@dataclass
class PrecisionResult:
    """One precision of one task after the gate (and after signing, ``bundle`` is set)."""

    precision: str
    model: Path
    files: list[Path]
    metrics: PrecisionMetrics
    items_per_second: float
    bundle: Path | None = None
    qdq: dict[str, int] | None = None


@dataclass
class TaskReport:
    task: str
    parity_max_abs: float
    results: dict[str, PrecisionResult]


def _session(path: Path, threads: int = 2) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_feeds(path: Path, feeds: Sequence[Feed], score: Callable[[list[np.ndarray]], np.ndarray]) -> tuple[np.ndarray, float]:
    """Probabilities over all feeds and items per second (first input's leading axis)."""
    outputs, speed = run_outputs(path, feeds, lambda o: np.asarray(score(o)).ravel())
    return outputs, speed


def run_outputs(
    path: Path, feeds: Sequence[Feed], pick: Callable[[list[np.ndarray]], np.ndarray],
    count: Count | None = None, stage: str = "",
) -> tuple[np.ndarray, float]:
    """``pick(outputs)`` of every feed concatenated, and items per second (first input's leading axis)."""
    session = _session(path)
    session.run(None, dict(feeds[0]))  # warm-up
    start = time.perf_counter()
    picked, done = [], 0
    total = sum(next(iter(feed.values())).shape[0] for feed in feeds)
    for feed in feeds:
        picked.append(pick(session.run(None, dict(feed))))
        done += next(iter(feed.values())).shape[0]
        if count is not None:
            count(stage, done, total)
    elapsed = time.perf_counter() - start
    return np.concatenate(picked), total / max(elapsed, 1e-9)


def convert_task(
    spec: TaskExport,
    work_dir: Path,
    precisions: Sequence[str] = PRECISIONS,
    gate: GateConfig = GateConfig(),
    progress: Progress | None = None,
    external_data: bool | None = None,
    count: Count | None = None,
) -> TaskReport:
    """Export, convert, calibrate and gate one task; raise GateFailed with the table on a miss."""
    say: Progress = progress or (lambda stage, message: logger.info("%s: %s", stage, message))
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or not precisions:
        raise ExportError(f"precisions {unknown or list(precisions)} are not valid; choose from {list(PRECISIONS)}")
    if work_dir.exists():
        shutil.rmtree(work_dir)
    fp32_path = work_dir / "fp32" / "model.onnx"
    say("export", f"{spec.task}: torch -> ONNX (dynamo), checker, shape inference, parity")
    exported = export_onnx(
        spec.module, spec.sample, spec.output_names, spec.dynamic_axes, fp32_path, external_data=external_data
    )
    say("export", f"{spec.task}: parity max |torch - onnx| = {exported.parity_max_abs:.2e}")
    paths: dict[str, Path] = {"fp32": fp32_path}
    qdq: dict[str, int] | None = None
    if "fp16" in precisions:
        say("convert", f"{spec.task}: fp16 mixed precision (fp32 I/O, large and reducing nodes kept fp32)")
        paths["fp16"] = work_dir / "fp16" / "model.onnx"
        # a transformer's every intermediate tensor is probed at once: a few tiles bound the memory
        sample = [{k: v[:4] for k, v in f.items()} for f in spec.calibration[:1]] if spec.transformer else spec.calibration[:2]
        convert_fp16(fp32_path, paths["fp16"], sample=sample, residual_fp32=spec.transformer is not None)
    if "int8" in precisions:
        say("calibrate", f"{spec.task}: int8 Q/DQ, {spec.int8.method} calibration on {len(spec.calibration)} batches")
        paths["int8"] = work_dir / "int8" / "model.onnx"
        quantize_int8(
            fp32_path, paths["int8"], spec.calibration, spec.int8,
            progress=None if count is None else lambda done, total: count(f"calibrate {spec.task}", done, total),
        )  # fmt: skip
        summary = check_qdq_model(paths["int8"], residual_adds=spec.transformer is None)
        qdq = dict(vars(summary))
    say("validate", f"{spec.task}: accuracy gate on {len(spec.heldout.labels)} held-out cases")
    metrics, speed = _gate(spec, paths, precisions, gate, count)
    enforce(spec.task, metrics)
    bundled = dict(paths)
    if spec.transformer is not None:
        heads, width = spec.transformer
        say("optimize", f"{spec.task}: ONNX Runtime transformer fusions (attention, LayerNorm, GELU) for the CPU bundle")
        bundled["fp32"] = work_dir / "fp32-ort" / "model.onnx"
        optimize_for_ort_cpu(fp32_path, bundled["fp32"], heads, width, spec.calibration[:1])
    results = {
        p: PrecisionResult(p, bundled[p], model_files(bundled[p]), metrics[p], speed[p], qdq=qdq if p == "int8" else None)
        for p in precisions
    }
    return TaskReport(spec.task, exported.parity_max_abs, results)


def _gate(
    spec: TaskExport, paths: dict[str, Path], precisions: Sequence[str], gate: GateConfig, count: Count | None
) -> tuple[dict[str, PrecisionMetrics], dict[str, float]]:
    """Held-out metrics of every precision against fp32, and items per second on ONNX Runtime's CPU."""
    outputs: dict[str, np.ndarray] = {}
    speed: dict[str, float] = {}
    encoder = spec.encoder_gate
    for precision in ("fp32", *[p for p in PRECISIONS if p in precisions and p != "fp32"]):
        if encoder is None:
            outputs[precision], speed[precision] = run_feeds(paths[precision], spec.heldout.feeds, spec.score)
        else:
            outputs[precision], speed[precision] = run_outputs(
                paths[precision], spec.heldout.feeds, lambda o: o[0], count, f"gate {spec.task} {precision}"
            )
    if encoder is None:
        return evaluate(spec.heldout.labels, outputs, spec.threshold, gate), speed
    return evaluate_embeddings(spec.heldout.labels, outputs, encoder.bags, encoder.aggregate, spec.threshold, gate), speed


def sign_bundles(
    spec: TaskExport,
    report: TaskReport,
    out_dir: Path,
    private_key_pem: bytes,
    version: str,
    vendor: str,
    demo: bool,
    gate: GateConfig = GateConfig(),
) -> list[Path]:
    """Write one signed ONNX Runtime bundle per precision with ``engines.bundle.write_bundle``."""
    import onnxruntime as ort

    from engines.bundle import write_bundle

    written = []
    for precision, result in report.results.items():
        session = _session(result.model)
        outputs = dict(zip(spec.output_names, session.run(None, dict(spec.golden)), strict=True))
        atol, rtol = GOLDEN_TOLERANCE[precision]
        card = card_from_dict(spec.task, spec.model_card).to_dict()  # checked as install will, every value stated
        fields: dict[str, Any] = {
            "task": spec.task,
            "version": f"{version}+{precision}",
            "vendor": vendor,
            "demo": demo,
            "precision": precision,
            "backend": {"name": "onnxruntime", "min_version": ort.__version__.split("+")[0]},
            "model_file": "model.onnx",
            "model_card": card,
            "batch_sizes": list(spec.batch_sizes),
            "golden": {"inputs": dict(spec.golden), "outputs": outputs, "atol": atol, "rtol": rtol},
            "metrics": {
                "gate": result.metrics.as_dict(),
                "gate_limits": vars(gate),
                "parity_max_abs_fp32": report.parity_max_abs,
                "heldout_items_per_second_cpu": round(result.items_per_second, 2),
                **({"qdq": result.qdq} if result.qdq else {}),
            },
        }
        files = {f.name: f for f in result.files}
        target = out_dir / f"{spec.task}-{version}-{precision}"
        if target.exists():
            shutil.rmtree(target)
        result.bundle = write_bundle(target, fields, files, private_key_pem)
        written.append(result.bundle)
    return written
