"""``appliance export`` as a library call: models in, signed bundles (and optional Triton / TensorRT output) out.

:func:`run_export` trains the demo models (or loads a checkpoint), or makes a ViT
tile encoder and its aggregator, then for each task converts (ONNX, FP16, INT8),
gates against fp32, signs one bundle per precision and, when asked, writes a
Triton model repository and TensorRT plans. Progress goes to ``say(stage,
message)`` and ``count(stage, done, total)``; the CLI only turns options into an
:class:`ExportRequest` and prints the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from export.checkpoint import describe as describe_vit
from export.checkpoint import load_vit
from export.demo import TASKS, ensure_demo_key, task_specs
from export.encoder import QUICK_ENCODER_DATA, EncoderData, encoder_specs
from export.errors import ExportError
from export.gate import GateConfig
from export.models.vit import preset
from export.pipeline import PRECISIONS, TaskExport, TaskReport, convert_task, sign_bundles
from export.train import QUICK_SIZES, DemoSizes, train_demo_models, train_demo_vit

__all__ = ["DEMO_NOTICE", "ENCODER_TASKS", "ExportOutcome", "ExportRequest", "run_export"]

DEMO_NOTICE = "demo model, not for clinical use"
#: what ``--encoder`` exports: the ViT tile encoder and the aggregator trained on its embeddings
ENCODER_TASKS = ("pathology_tile", "pathology_slide")

Say = Callable[[str, str], None]
Count = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExportRequest:
    """What to export, as the ``appliance export`` options give it (None: the default)."""

    out: Path
    tasks: tuple[str, ...] = ()
    checkpoint: Path | None = None
    encoder: str | None = None
    readout: str = "cls"
    tile_size: int = 224
    mpp: float = 0.5
    key: Path | None = None
    vendor: str = "demo-vendor"
    version: str = "0.1.0"
    precisions: tuple[str, ...] = ()
    calibration: Literal["entropy", "percentile", "minmax"] = "percentile"
    gate: GateConfig = GateConfig()
    triton: Path | None = None
    tensorrt: bool = False
    quick: bool = False


@dataclass(frozen=True)
class ExportOutcome:
    """Task -> precision -> signed bundle directory; ``demo`` when signed with a demo key or demo-trained."""

    bundles: dict[str, dict[str, Path]]
    demo: bool


def _plan(request: ExportRequest) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tasks and precisions to export, checked; fp32 is always made (the gate compares against it)."""
    known = ENCODER_TASKS if request.encoder is not None else TASKS
    tasks = request.tasks or tuple(known)
    bad = sorted(set(tasks) - set(known))
    if bad:
        raise ExportError(f"unknown task(s) {bad}{' with --encoder' if request.encoder else ''}; known: {list(known)}")
    if request.encoder is not None and "pathology_slide" not in tasks:
        tasks = (*tasks, "pathology_slide")  # the aggregator is trained on this encoder's embeddings: ship it too
    precisions = request.precisions or PRECISIONS
    if "fp32" not in precisions:
        precisions = ("fp32", *precisions)
    if request.tensorrt:
        from export.tensorrt_build import tensorrt_available

        if not tensorrt_available():
            raise ExportError("--tensorrt needs the tensorrt package and a GPU on this machine; it is not installed")
    return tuple(tasks), tuple(precisions)


def _encoder_specs(request: ExportRequest, say: Say, count: Count) -> dict[str, TaskExport]:
    """Export specs of a ViT tile encoder (site checkpoint, or a demo ViT trained here) and its aggregator."""
    name, checkpoint, quick = str(request.encoder), request.checkpoint, request.quick
    base = preset(name, readout=request.readout, tile_size=request.tile_size, mpp=request.mpp)
    if checkpoint is not None:
        say("load", f"{checkpoint.name}: matching {name} strictly (timm VisionTransformer layout)")
        model = load_vit(checkpoint, base)
        source = f"site checkpoint {checkpoint.name}"
    else:
        say("train", f"no --checkpoint: training a random-initialized {name} on synthetic tiles ({DEMO_NOTICE})")
        model = train_demo_vit(base, tiles=64 if quick else 768, epochs=1 if quick else 2, progress=lambda m: say("train", m))
        source = f"demo training on synthetic tiles ({DEMO_NOTICE})"
    say("load", f"{name}: {describe_vit(model.config)}")
    specs, _ = encoder_specs(model, QUICK_ENCODER_DATA if quick else EncoderData(), demo=checkpoint is None,
                             source=source, say=say, count=count)  # fmt: skip
    return specs


def _specs(request: ExportRequest, say: Say, count: Count) -> dict[str, TaskExport]:
    if request.encoder is not None:
        return _encoder_specs(request, say, count)
    sizes = QUICK_SIZES if request.quick else DemoSizes()
    models = train_demo_models(sizes, progress=lambda m: say("train", m), checkpoint=request.checkpoint)
    return task_specs(models)


def _extras(request: ExportRequest, name: str, spec: TaskExport, report: TaskReport, bundles: dict[str, Path],
            pem: bytes, say: Say) -> None:
    """The Triton model repository entries and TensorRT plans of one task, when asked."""
    results = report.results
    if request.triton is not None:
        from engines.cards import card_from_dict
        from export.triton_repo import write_triton_bundle, write_triton_model

        for p, result in results.items():
            write_triton_model(request.triton, f"{name}_{p}", result.files, card_from_dict(name, spec.model_card),
                               batch_sizes=spec.batch_sizes)
            write_triton_bundle(bundles[p], request.out / "bundles" / f"{name}-{request.version}-{p}-triton",
                                f"{name}_{p}", pem)
        say("triton", f"{name}: model repository entries in {request.triton}")
    if request.tensorrt:
        from export.tensorrt_build import TrtBuildSettings, build_engine
        from export.tensorrt_build import describe as describe_plan

        for p in ("fp16", "int8"):
            if p in results:
                say("build", f"{name} {p}: TensorRT strongly typed build")
                record = build_engine(results[p].model, request.out / "work" / name / p / "model.plan",
                                      TrtBuildSettings(timing_cache=request.out / "timing.cache"))
                say("build", f"{name} {p}: {describe_plan(record)}")


def run_export(request: ExportRequest, say: Say, count: Count) -> ExportOutcome:
    """Export every requested task to signed bundles under ``request.out / "bundles"``."""
    tasks, precisions = _plan(request)
    demo = request.key is None
    if request.key is None:
        pem = ensure_demo_key(request.out / "keys", request.out / "trusted_keys")
        say("sign", f"no --key given: signing with a demo key, bundles are marked demo ({DEMO_NOTICE})")
    else:
        pem = request.key.read_bytes()
    specs = _specs(request, say, count)
    demo = demo or (request.encoder is not None and request.checkpoint is None)
    bundles: dict[str, dict[str, Path]] = {}
    for name in tasks:
        spec = specs[name]
        spec.int8 = replace(spec.int8, method=request.calibration)
        report = convert_task(spec, request.out / "work" / name, precisions, request.gate, say, count=count)
        paths = sign_bundles(spec, report, request.out / "bundles", pem, request.version, request.vendor, demo,
                             request.gate)
        bundles[name] = dict(zip(report.results, paths, strict=True))
        _extras(request, name, spec, report, bundles[name], pem, say)
    return ExportOutcome(bundles, demo)
