"""``appliance export`` (model -> signed engine bundles) and ``appliance engines install-demo``.

Both import the export stage lazily inside the command: the running appliance never
imports ``export``. Progress goes through Rich (export, calibration, validation,
signing, install) and the command ends with a table precision x metrics x throughput.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.cli._options import ConfigOption, config_from

DEMO_NOTICE = "demo model, not for clinical use"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class Calibration(str, Enum):
    entropy = "entropy"
    percentile = "percentile"


class Encoder(str, Enum):
    vit_s16 = "vit-s16"
    vit_b16 = "vit-b16"
    vit_l16 = "vit-l16"
    vit_h14_swiglu = "vit-h14-swiglu"
    vit_g14 = "vit-g14"


class Readout(str, Enum):
    cls = "cls"
    cls_mean = "cls+mean"


class _Reporter:
    """``say(stage, message)`` logs a line; ``count(stage, done, total)`` moves a progress bar per stage."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.current = bar.add_task("starting", total=None)
        self.bars: dict[str, TaskID] = {}

    def __call__(self, stage: str, message: str) -> None:
        self.bar.update(self.current, description=f"{stage}: {message}")
        self.bar.console.log(f"[cyan]{stage}[/cyan] {message}")

    def count(self, stage: str, done: int, total: int) -> None:
        if stage not in self.bars:
            self.bars[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.bars[stage], completed=done, total=total)


@contextmanager
def _progress(console: Console) -> Iterator[_Reporter]:
    import logging

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "onnxruntime", "export", "engines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # the progress lines say it once
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        yield _Reporter(bar)


def _results_table(bundles: dict[str, dict[str, Path]]) -> Table:
    table = Table("task", "precision", "AUC", "agree", "max|dp|", "cos mean", "items/s", "gate",
                  title="precision x metrics x throughput (held-out set, ONNX Runtime CPU)")
    for task, by_precision in bundles.items():
        for precision, path in by_precision.items():
            manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
            gate = manifest.get("metrics", {}).get("gate", {})
            speed = manifest.get("metrics", {}).get("heldout_items_per_second_cpu", 0.0)
            table.add_row(
                task, precision, f"{gate.get('auc', float('nan')):.4f}", f"{gate.get('agreement', 0.0):.1%}",
                f"{gate.get('max_probability_diff', float('nan')):.4f}",
                "" if gate.get("cosine_mean") is None else f"{gate['cosine_mean']:.5f}", f"{speed:,.0f}",
                "pass" if gate.get("passed") else "FAIL",
            )
    return table


ENCODER_TASKS = ("pathology_tile", "pathology_slide")


def _encoder_specs(
    name: str, checkpoint: Path | None, readout: str, tile_size: int, mpp: float, quick: bool, say: _Reporter
) -> dict[str, Any]:
    """Export specs of a ViT tile encoder (site checkpoint, or a demo ViT trained here) and its aggregator."""
    from export.checkpoint import describe, load_vit
    from export.encoder import QUICK_ENCODER_DATA, EncoderData, encoder_specs
    from export.models.vit import preset
    from export.train import train_demo_vit

    base = preset(name, readout=readout, tile_size=tile_size, mpp=mpp)
    if checkpoint is not None:
        say("load", f"{checkpoint.name}: matching {name} strictly (timm VisionTransformer layout)")
        model = load_vit(checkpoint, base)
        source = f"site checkpoint {checkpoint.name}"
    else:
        say("train", f"no --checkpoint: training a random-initialized {name} on synthetic tiles ({DEMO_NOTICE})")
        model = train_demo_vit(base, tiles=64 if quick else 768, epochs=1 if quick else 2, progress=lambda m: say("train", m))
        source = f"demo training on synthetic tiles ({DEMO_NOTICE})"
    say("load", f"{name}: {describe(model.config)}")
    specs, _ = encoder_specs(model, QUICK_ENCODER_DATA if quick else EncoderData(), demo=checkpoint is None,
                             source=source, say=say, count=say.count)  # fmt: skip
    return specs


def register(app: typer.Typer) -> None:
    from appliance.cli._engines import engines_app, open_registry

    @app.command("export")
    def export_command(
        out: Annotated[Path, typer.Option("--out", help="Directory for the bundles (and the work files).")] = Path("./export-out"),
        task: Annotated[Optional[list[str]], typer.Option("--task", help="pathology_tile, pathology_slide, breast_mri (repeatable; default all).")] = None,  # noqa: UP007
        checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Weights written by export.train.save_checkpoint; default: train the demo models. With --encoder: the site's ViT checkpoint in timm's layout (.safetensors or a torch state dict).")] = None,  # noqa: UP007
        encoder: Annotated[Optional[Encoder], typer.Option("--encoder", help="ViT tile encoder preset for pathology_tile (with --checkpoint: a site's foundation model; without: a demo ViT trained on synthetic tiles); the aggregator is trained on its frozen embeddings.")] = None,  # noqa: UP007
        readout: Annotated[Readout, typer.Option("--readout", help="Encoder embedding: class token, or class token + mean of patch tokens (Virchow).")] = Readout.cls,
        tile_size: Annotated[int, typer.Option("--tile-size", help="Encoder input side in pixels (the position embedding is resampled to it).", min=14)] = 224,
        mpp: Annotated[float, typer.Option("--mpp", help="Microns per pixel the encoder expects.", min=0.01)] = 0.5,
        key: Annotated[Optional[Path], typer.Option("--key", help="Vendor Ed25519 private key (PEM); default: a demo key under OUT/keys and demo bundles.")] = None,  # noqa: UP007
        vendor: Annotated[str, typer.Option("--vendor", help="Vendor name written into the manifest.")] = "demo-vendor",
        version: Annotated[str, typer.Option("--version", help="Engine version; the precision is appended (+fp16).")] = "0.1.0",
        precision: Annotated[Optional[list[Precision]], typer.Option("--precision", help="Precisions to export (repeatable; default fp32, fp16, int8).")] = None,  # noqa: UP007
        calibration: Annotated[Calibration, typer.Option("--calibration", help="INT8 calibration method.")] = Calibration.percentile,
        max_auc_drop: Annotated[float, typer.Option("--max-auc-drop", help="Gate: largest AUC drop against fp32.")] = 0.02,
        min_agreement: Annotated[float, typer.Option("--min-agreement", help="Gate: smallest label agreement with fp32.")] = 0.95,
        max_prob_diff: Annotated[float, typer.Option("--max-prob-diff", help="Gate: largest probability difference to fp32.")] = 0.10,
        triton: Annotated[Optional[Path], typer.Option("--triton", help="Also write a Triton model repository here, and a signed Triton bundle per precision.")] = None,  # noqa: UP007
        tensorrt: Annotated[bool, typer.Option("--tensorrt", help="Also build TensorRT plans (needs TensorRT and a GPU).")] = False,
        quick: Annotated[bool, typer.Option("--quick", help="Tiny models and data (for tests).", hidden=True)] = False,
    ) -> None:
        """Export models to signed engine bundles: ONNX, FP16, INT8 (Q/DQ), accuracy gate, signing."""
        from dataclasses import replace

        from export.demo import TASKS, task_specs
        from export.errors import ExportError
        from export.gate import GateConfig
        from export.pipeline import PRECISIONS, convert_task, sign_bundles
        from export.train import QUICK_SIZES, DemoSizes, train_demo_models

        known = ENCODER_TASKS if encoder is not None else TASKS
        tasks = tuple(task or known)
        bad = sorted(set(tasks) - set(known))
        if bad:
            raise ExportError(f"unknown task(s) {bad}{' with --encoder' if encoder else ''}; known: {list(known)}")
        if encoder is not None and "pathology_slide" not in tasks:
            tasks = (*tasks, "pathology_slide")  # the aggregator is trained on this encoder's embeddings: ship it too
        precisions = tuple(p.value for p in precision) if precision else PRECISIONS
        if "fp32" not in precisions:
            precisions = ("fp32", *precisions)  # the gate compares against fp32
        if tensorrt:
            from export.tensorrt_build import tensorrt_available

            if not tensorrt_available():
                raise ExportError("--tensorrt needs the tensorrt package and a GPU on this machine; it is not installed")
        gate = GateConfig(max_auc_drop=max_auc_drop, min_agreement=min_agreement, max_probability_diff=max_prob_diff)
        demo = key is None
        console = Console()
        with _progress(console) as say:
            if key is None:
                from export.demo import ensure_demo_key

                pem = ensure_demo_key(out / "keys", out / "trusted_keys")
                say("sign", f"no --key given: signing with a demo key, bundles are marked demo ({DEMO_NOTICE})")
            else:
                pem = key.read_bytes()
            if encoder is not None:
                specs = _encoder_specs(encoder.value, checkpoint, readout.value, tile_size, mpp, quick, say)
                demo = demo or checkpoint is None
            else:
                sizes = QUICK_SIZES if quick else DemoSizes()
                models = train_demo_models(sizes, progress=lambda m: say("train", m), checkpoint=checkpoint)
                specs = task_specs(models)
            bundles: dict[str, dict[str, Path]] = {}
            for name in tasks:
                spec = specs[name]
                spec.int8 = replace(spec.int8, method=calibration.value)
                report = convert_task(spec, out / "work" / name, precisions, gate, say, count=say.count)
                paths = sign_bundles(spec, report, out / "bundles", pem, version, vendor, demo, gate)
                bundles[name] = dict(zip(report.results, paths, strict=True))
                if triton is not None:
                    from engines.cards import card_from_dict
                    from export.triton_repo import write_triton_bundle, write_triton_model

                    for p, result in report.results.items():
                        write_triton_model(triton, f"{name}_{p}", result.files, card_from_dict(name, spec.model_card),
                                           batch_sizes=spec.batch_sizes)
                        write_triton_bundle(bundles[name][p], out / "bundles" / f"{name}-{version}-{p}-triton",
                                            f"{name}_{p}", pem)
                    say("triton", f"{name}: model repository entries in {triton}")
                if tensorrt:
                    from export.tensorrt_build import TrtBuildSettings, build_engine, describe

                    for p in ("fp16", "int8"):
                        if p in report.results:
                            say("build", f"{name} {p}: TensorRT strongly typed build")
                            record = build_engine(
                                report.results[p].model, out / "work" / name / p / "model.plan",
                                TrtBuildSettings(timing_cache=out / "timing.cache"),
                            )
                            say("build", f"{name} {p}: {describe(record)}")
        console.print(_results_table(bundles))
        console.print(f"signed bundles in {out / 'bundles'}")
        if demo:
            console.print(f"[yellow]{DEMO_NOTICE}[/yellow]: trusted key for these bundles is {out / 'trusted_keys'}")

    @engines_app.command("install-demo")
    def install_demo_command(
        config: ConfigOption = None,
        precision: Annotated[Precision, typer.Option("--precision", help="Which precision to activate.")] = Precision.fp32,
        quick: Annotated[bool, typer.Option("--quick", help="Tiny models and data (for tests).", hidden=True)] = False,
    ) -> None:
        """Make (or reuse) the demo engines, install them and activate them (demo model, not for clinical use)."""
        from export.demo import DEMO_GATE, QUICK_GATE, install_demo
        from export.train import QUICK_SIZES, DemoSizes

        cfg = config_from(config)
        console = Console()
        with _progress(console) as say, open_registry(cfg) as registry:
            active = install_demo(
                cfg.data_dir, cfg.trusted_keys_dir, precision.value, actor="cli:install-demo",
                sizes=QUICK_SIZES if quick else DemoSizes(), progress=say, registry=registry,
                gate=QUICK_GATE if quick else DEMO_GATE,
            )
        from export.demo import DEMO_VERSION

        bundles = {t: {p: cfg.data_dir / "demo-engines" / "bundles" / f"{t}-{DEMO_VERSION}-{p}" for p in ("fp32", "fp16", "int8")}
                   for t in active}
        console.print(_results_table(bundles))
        table = Table("task", "active version", title=f"demo engines ({DEMO_NOTICE})")
        for task_name, version_name in active.items():
            table.add_row(task_name, version_name)
        console.print(table)
