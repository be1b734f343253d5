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
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.cli._engines import engines_app, open_registry
from appliance.cli._extras import require_export_extra
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
    require_export_extra("export")
    from export.gate import GateConfig
    from export.orchestrate import ExportRequest, run_export

    request = ExportRequest(
        out=out, tasks=tuple(task or ()), checkpoint=checkpoint, encoder=encoder.value if encoder else None,
        readout=readout.value, tile_size=tile_size, mpp=mpp, key=key, vendor=vendor, version=version,
        precisions=tuple(p.value for p in precision or ()), calibration=calibration.value,
        gate=GateConfig(max_auc_drop=max_auc_drop, min_agreement=min_agreement, max_probability_diff=max_prob_diff),
        triton=triton, tensorrt=tensorrt, quick=quick,
    )
    console = Console()
    with _progress(console) as say:
        outcome = run_export(request, say, say.count)
    console.print(_results_table(outcome.bundles))
    console.print(f"signed bundles in {out / 'bundles'}")
    if outcome.demo:
        console.print(f"[yellow]{DEMO_NOTICE}[/yellow]: trusted key for these bundles is {out / 'trusted_keys'}")


def install_demo_command(
    config: ConfigOption = None,
    precision: Annotated[Precision, typer.Option("--precision", help="Which precision to activate.")] = Precision.fp32,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny models and data (for tests).", hidden=True)] = False,
) -> None:
    """Make (or reuse) the demo engines, install them and activate them (demo model, not for clinical use)."""
    require_export_extra("engines install-demo")
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


def register(app: typer.Typer) -> None:
    """Add ``export`` to ``app`` and ``install-demo`` to ``appliance engines``."""
    app.command("export")(export_command)
    engines_app.command("install-demo")(install_demo_command)
