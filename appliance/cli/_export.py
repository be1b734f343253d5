"""``appliance export`` (model -> signed engine bundles) and ``appliance engines install-demo``.

Both import the export stage lazily inside the command: the running appliance never
imports ``export``. Progress goes through Rich (export, calibration, validation,
signing, install) and the command ends with a table precision x metrics x throughput.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
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


@contextmanager
def _progress(console: Console) -> Iterator[Callable[[str, str], None]]:
    import logging

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "onnxruntime", "export", "engines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # the progress lines say it once
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console) as bar:
        current = bar.add_task("starting", total=None)

        def say(stage: str, message: str) -> None:
            bar.update(current, description=f"{stage}: {message}")
            bar.console.log(f"[cyan]{stage}[/cyan] {message}")

        yield say


def _results_table(bundles: dict[str, dict[str, Path]]) -> Table:
    table = Table("task", "precision", "AUC", "agree", "max|dp|", "items/s", "gate",
                  title="precision x metrics x throughput (held-out set, ONNX Runtime CPU)")
    for task, by_precision in bundles.items():
        for precision, path in by_precision.items():
            manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
            gate = manifest.get("metrics", {}).get("gate", {})
            speed = manifest.get("metrics", {}).get("heldout_items_per_second_cpu", 0.0)
            table.add_row(
                task, precision, f"{gate.get('auc', float('nan')):.4f}", f"{gate.get('agreement', 0.0):.1%}",
                f"{gate.get('max_probability_diff', float('nan')):.4f}", f"{speed:,.0f}",
                "pass" if gate.get("passed") else "FAIL",
            )
    return table


def register(app: typer.Typer) -> None:
    from appliance.cli._engines import engines_app, open_registry

    @app.command("export")
    def export_command(
        out: Annotated[Path, typer.Option("--out", help="Directory for the bundles (and the work files).")] = Path("./export-out"),
        task: Annotated[Optional[list[str]], typer.Option("--task", help="pathology_tile, pathology_slide, breast_mri (repeatable; default all).")] = None,  # noqa: UP007
        checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Weights written by export.train.save_checkpoint; default: train the demo models.")] = None,  # noqa: UP007
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

        tasks = tuple(task or TASKS)
        bad = sorted(set(tasks) - set(TASKS))
        if bad:
            raise ExportError(f"unknown task(s) {bad}; known: {list(TASKS)}")
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
            sizes = QUICK_SIZES if quick else DemoSizes()
            models = train_demo_models(sizes, progress=lambda m: say("train", m), checkpoint=checkpoint)
            specs = task_specs(models)
            bundles: dict[str, dict[str, Path]] = {}
            for name in tasks:
                spec = specs[name]
                spec.int8 = replace(spec.int8, method=calibration.value)
                report = convert_task(spec, out / "work" / name, precisions, gate, say)
                paths = sign_bundles(spec, report, out / "bundles", pem, version, vendor, demo, gate)
                bundles[name] = dict(zip(report.results, paths, strict=True))
                if triton is not None:
                    from export.triton_repo import write_triton_bundle, write_triton_model

                    for p, result in report.results.items():
                        write_triton_model(triton, f"{name}_{p}", result.files, spec.model_card,
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
