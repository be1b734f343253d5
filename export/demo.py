"""Make or reuse the demo engines: train, export, sign with a demo vendor key, install and activate.

Demo model, not for clinical use: every model card and message says so. Trained
models and bundles are cached under ``data_dir/demo-engines`` so a second call
reuses them (the training is deterministic, so the cache is only a time saver).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engines.files import atomic_write
from export.errors import ExportError
from export.gate import GateConfig
from export.models.dce4d import CLINICAL_VARIABLES
from export.models.mil import BAG_POOLING, POOLED_OUTPUTS, PooledMIL
from export.models.tile import H_AND_E_MEAN, H_AND_E_STD
from export.synthetic.dce import POST_CONTRAST_TIMES_S
from export.pipeline import PRECISIONS, Progress, TaskExport, TaskReport, convert_task, sign_bundles
from export.train import DEMO_NOTICE, DemoModels, DemoSizes, save_checkpoint, train_demo_models

if TYPE_CHECKING:
    from engines.registry import Registry

logger = logging.getLogger(__name__)

DEMO_VENDOR = "demo-vendor"
DEMO_VERSION = "0.1.0-demo"
DEMO_KEY_NAME = "demo-vendor"
TASKS = ("pathology_tile", "pathology_slide", "breast_mri")
#: the demo gate: generous enough for small synthetic held-out sets, strict enough to catch broken calibration
DEMO_GATE = GateConfig(max_auc_drop=0.02, min_agreement=0.95, max_probability_diff=0.10, min_auc=0.6)
#: the gate for the tiny test models: no AUC floor (they train for seconds), the same limits against fp32
QUICK_GATE = GateConfig(max_auc_drop=0.05, min_agreement=0.9, max_probability_diff=0.04, min_auc=0.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def task_specs(models: DemoModels) -> dict[str, TaskExport]:
    """The three demo tasks with their model cards, held-out sets and calibration data."""
    s = models.sizes
    weight = models.probe.linear.weight.detach().numpy().ravel().astype(np.float64)
    bias = float(models.probe.linear.bias.detach().numpy()[0])

    def tile_score(outputs: list[np.ndarray]) -> np.ndarray:
        return _sigmoid(np.maximum(outputs[0], 0.0) @ weight + bias)

    cards = demo_cards(s, weight, bias)
    held, cal = models.heldout, models.calibration
    tile_feed = held["pathology_tile"].feeds[0]["image"]
    return {
        "pathology_tile": TaskExport(
            "pathology_tile", models.tile, {"image": torch.from_numpy(tile_feed[:4])}, ("embedding",),
            {"image": {0: "batch"}}, cards["pathology_tile"], (1, 256), held["pathology_tile"], cal["pathology_tile"],
            tile_score, 0.5, {"image": tile_feed[:2]},
        ),
        "pathology_slide": TaskExport(
            "pathology_slide", PooledMIL(models.mil),
            {"embeddings": torch.from_numpy(held["pathology_slide"].feeds[0]["embeddings"])}, POOLED_OUTPUTS, {"embeddings": {0: "bag"}}, cards["pathology_slide"], (1, 65536),
            held["pathology_slide"], cal["pathology_slide"], lambda outputs: outputs[0], 0.5,
            {"embeddings": held["pathology_slide"].feeds[0]["embeddings"][:8]},
        ),
        "breast_mri": TaskExport(
            "breast_mri", models.dce,
            {k: torch.from_numpy(v[:2]) for k, v in held["breast_mri"].feeds[0].items()},
            ("probability",), {"dce": {0: "batch"}, "clinical": {0: "batch"}}, cards["breast_mri"], (1, 16),
            held["breast_mri"], cal["breast_mri"], lambda outputs: outputs[0], 0.5,
            {k: v[:1] for k, v in held["breast_mri"].feeds[0].items()},
        ),
    }


def demo_cards(sizes: DemoSizes, weight: np.ndarray, bias: float) -> dict[str, dict[str, Any]]:
    """The three demo model cards (``weight``, ``bias``: the tile encoder's tumour probe)."""
    tile, mil, dce = sizes.tile, sizes.mil, sizes.dce
    notice = {"notice": DEMO_NOTICE, "demo": True}
    tile_card = {
        **notice,
        "description": "Pathology tile encoder (compact residual CNN): H&E tile to embedding",
        "inputs": [{"name": "image", "shape": ["N", 3, tile.tile_size, tile.tile_size], "dtype": "float32",
                    "layout": "NCHW", "color": "RGB", "scale": "0..1 then (x - mean) / std"}],
        "outputs": [{"name": "embedding", "shape": ["N", tile.embed_dim], "dtype": "float32"}],
        "tile_size": tile.tile_size, "mpp": tile.mpp, "mean": list(H_AND_E_MEAN), "std": list(H_AND_E_STD),
        "embed_dim": tile.embed_dim, "architecture": asdict(tile),
        "tumour_probe": {"weight": weight.round(6).tolist(), "bias": round(bias, 6), "activation": "relu then sigmoid"},
    }
    slide_card = {
        **notice,
        "description": "Gated-attention MIL aggregator (Ilse et al. 2018): tile embeddings to slide probability",
        "inputs": [{"name": "embeddings", "shape": ["N", mil.embed_dim], "dtype": "float32"}],
        "outputs": [
            {"name": "probability", "shape": [1], "dtype": "float32", "meaning": "probability of tumour in the slide"},
            {"name": "attention", "shape": ["N"], "dtype": "float32", "meaning": "attention per tile, sums to 1"},
            {"name": "tile_scores", "shape": ["N"], "dtype": "float32", "meaning": "tumour score per tile in [0, 1]"},
            {"name": "attention_logits", "shape": ["N"], "dtype": "float32", "meaning": "attention logit per tile"},
            {"name": "tile_logits", "shape": ["N"], "dtype": "float32", "meaning": "classifier logit per tile"},
        ],
        "bag_pooling": dict(BAG_POOLING),
        "threshold": 0.5, "labels": ["no tumour", "tumour"],
        "codes": {"finding": {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"}},
        "architecture": asdict(mil),
    }
    dce_card = {
        **notice,
        "description": "Breast DCE-MRI 4-D CNN with clinical fusion: probability of axillary lymph-node metastasis",
        "inputs": [
            {"name": "dce", "shape": ["N", dce.phases, *dce.grid], "dtype": "float32", "layout": "N,phase,z,y,x",
             "normalization": "S / S0_mean - 1, S0_mean = mean pre-contrast signal inside the breast mask"},
            {"name": "clinical", "shape": ["N", dce.clinical], "dtype": "float32",
             "layout": "age/100, ER, HER2, Ki67/100, grade/3, then a missing indicator for each (value 0 when missing)"},
        ],
        "outputs": [{"name": "probability", "shape": ["N", 1], "dtype": "float32",
                     "meaning": "probability of axillary lymph-node metastasis"}],
        "threshold": 0.5, "phase_count": dce.phases, "grid": list(dce.grid), "spacing_mm": list(dce.spacing_mm),
        # the phases it was trained on: pre-contrast, then these seconds after injection (issue 13)
        "post_contrast_times_s": list(POST_CONTRAST_TIMES_S), "phase_tolerance_s": 30.0,
        "clinical_variables": list(CLINICAL_VARIABLES), "labels": ["node negative", "node positive"],
        "codes": {"finding": {"scheme": "SCT", "value": "399523006", "meaning": "Axillary lymph node metastasis"}},
        "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(dce).items()},
    }
    return {"pathology_tile": tile_card, "pathology_slide": slide_card, "breast_mri": dce_card}


def ensure_demo_key(keys_dir: Path, trusted_keys_dir: Path) -> bytes:
    """The demo vendor's private key (made once), with its public key copied into the trusted directory."""
    from engines.signing import generate_keypair

    private = keys_dir / f"{DEMO_KEY_NAME}.key"
    public = keys_dir / f"{DEMO_KEY_NAME}.pub"
    if not private.exists():
        generate_keypair(keys_dir, DEMO_KEY_NAME)
    trusted_keys_dir.mkdir(parents=True, exist_ok=True)
    trusted = trusted_keys_dir / public.name
    if not trusted.exists() or trusted.read_bytes() != public.read_bytes():
        atomic_write(trusted, public.read_bytes())
    return private.read_bytes()


def _recipe_digest() -> str:
    """sha256 of the data generators and the training recipe: a change to either retrains the demo."""
    from export import models as models_pkg
    from export import synthetic, train

    digest = hashlib.sha256()
    for package in (synthetic, models_pkg):
        for path in sorted(Path(package.__file__ or "").parent.glob("*.py")):
            digest.update(path.read_bytes())
    digest.update(Path(train.__file__ or "").read_bytes())
    return digest.hexdigest()


def build_demo_bundles(
    cache_dir: Path,
    private_key_pem: bytes,
    sizes: DemoSizes = DemoSizes(),
    precisions: tuple[str, ...] = PRECISIONS,
    gate: GateConfig = DEMO_GATE,
    progress: Progress | None = None,
    tasks: tuple[str, ...] = TASKS,
    models: DemoModels | None = None,
) -> dict[str, dict[str, Path]]:
    """Train (or reuse), export, gate and sign the demo bundles; return task -> precision -> bundle dir.

    ``models`` skips the training (they must have been trained with ``sizes``).
    """
    say: Progress = progress or (lambda stage, message: logger.info("%s: %s", stage, message))
    cache_dir.mkdir(parents=True, exist_ok=True)
    index_path = cache_dir / "bundles.json"
    key = json.dumps(
        {"sizes": asdict(sizes), "precisions": precisions, "tasks": tasks, "gate": asdict(gate), "code": _recipe_digest()},
        sort_keys=True, default=str,
    )
    if index_path.exists():
        index = json.loads(index_path.read_text())
        if index.get("key") == key and all(Path(p).is_dir() for t in index["bundles"].values() for p in t.values()):
            say("reuse", f"reusing cached demo bundles in {cache_dir} ({DEMO_NOTICE})")
            return {t: {p: Path(v) for p, v in d.items()} for t, d in index["bundles"].items()}
    if models is None:
        say("train", f"training the demo models on synthetic data ({DEMO_NOTICE})")
        models = train_demo_models(sizes, progress=lambda message: say("train", message))
    save_checkpoint(models, cache_dir / "demo-models.pt")
    specs = task_specs(models)
    bundles: dict[str, dict[str, Path]] = {}
    reports: dict[str, TaskReport] = {}
    for task in tasks:
        reports[task] = convert_task(specs[task], cache_dir / "work" / task, precisions, gate, say)
        say("sign", f"{task}: signing {len(precisions)} bundle(s) with the demo vendor key")
        paths = sign_bundles(specs[task], reports[task], cache_dir / "bundles", private_key_pem, DEMO_VERSION, DEMO_VENDOR, True, gate)
        bundles[task] = {p: path for p, path in zip(reports[task].results, paths, strict=True)}
    index = {"key": key, "bundles": {t: {p: str(v) for p, v in d.items()} for t, d in bundles.items()}}
    atomic_write(index_path, json.dumps(index).encode())  # the index names only bundles completely written
    return bundles


def install_demo(
    data_dir: Path,
    trusted_keys_dir: Path,
    precision: str = "fp32",
    actor: str = "install-demo",
    sizes: DemoSizes = DemoSizes(),
    progress: Progress | None = None,
    registry: Registry | None = None,
    models: DemoModels | None = None,
    gate: GateConfig = DEMO_GATE,
) -> dict[str, str]:
    """Make or reuse the demo bundles, install every precision and activate ``precision``; return task -> version."""
    from engines.registry import Registry

    say: Progress = progress or (lambda stage, message: logger.info("%s: %s", stage, message))
    cache = data_dir / "demo-engines"
    key = ensure_demo_key(cache / "keys", trusted_keys_dir)
    bundles = build_demo_bundles(cache, key, sizes, gate=gate, progress=say, models=models)
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    registry = registry or Registry(data_dir / "engines", trusted_keys_dir)
    active: dict[str, str] = {}
    for task, by_precision in bundles.items():
        installed = set(registry.versions(task))
        for p, bundle in by_precision.items():
            version = f"{DEMO_VERSION}+{p}"
            if version not in installed:
                say("install", f"{task} {version}: verifying and installing ({DEMO_NOTICE})")
                registry.install(bundle, actor)
        version = f"{DEMO_VERSION}+{precision}"
        if registry.active_version(task) != version:
            registry.activate(task, version, actor)
        active[task] = version
    say("install", f"active demo engines: {active} ({DEMO_NOTICE})")
    return active


__all__ = ["DEMO_GATE", "QUICK_GATE", "DEMO_VERSION", "TASKS", "build_demo_bundles", "demo_cards", "ensure_demo_key",
           "install_demo", "task_specs"]
