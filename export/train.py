"""Deterministic training of the three demo models on synthetic data (demo models, not for clinical use).

Runs on 2 CPU cores in a few minutes: seeded NumPy generators make the data,
``torch.manual_seed`` + ``torch.use_deterministic_algorithms`` + two threads make the
optimisation reproducible, so the script reproduces the same weights every run.

- ``pathology_tile``: the tile encoder with a linear tumour probe, on H&E-like tiles
  (:func:`export.synthetic.tissue.render_tile`), normalized by the card's mean/std.
- ``pathology_slide``: the gated-attention MIL aggregator on bags of tile embeddings
  (positive bags hold 10-50 % tumour tiles).
- ``breast_mri``: the 4-D CNN on synthetic DCE studies (:func:`export.synthetic.dce.make_case`),
  preprocessed like the appliance does (``export.synthetic.dce.relative_signal``: S/S0_mean - 1
  inside the breast mask, 0 outside) plus the 10-value clinical vector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.files import durable_file
from export.errors import TrainingDataMissing
from export.models.dce4d import DceConfig, DceNet, clinical_vector
from export.models.mil import GatedAttentionMIL, MilConfig
from export.models.tile import H_AND_E_MEAN, H_AND_E_STD, TileConfig, TileEncoder, TileProbe
from export.models.vit import VisionTransformer, VitConfig

logger = logging.getLogger(__name__)

DEMO_NOTICE = "demo model, not for clinical use"
#: the demo tile encoder: 96 px tiles at the synthetic renderer's native 0.5 um/px, narrow and shallow
DEMO_TILE = TileConfig(tile_size=96, mpp=0.5, width=16, depth=3, blocks=1, embed_dim=64)
DEMO_MIL = MilConfig(embed_dim=64, hidden=32, attention=16)
DEMO_DCE = DceConfig(width=8)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DemoSizes:
    """How much synthetic data and how many epochs; tests use a tiny setting."""

    tiles: int = 1024
    tile_epochs: int = 2
    bags: int = 240
    bag_epochs: int = 3
    dce_cases: int = 128
    dce_epochs: int = 16
    heldout_tiles: int = 384
    heldout_bags: int = 80
    heldout_cases: int = 64
    tile: TileConfig = DEMO_TILE
    mil: MilConfig = DEMO_MIL
    dce: DceConfig = DEMO_DCE


QUICK_SIZES = DemoSizes(
    tiles=192, tile_epochs=2, bags=48, bag_epochs=3, dce_cases=24, dce_epochs=2,
    heldout_tiles=96, heldout_bags=24, heldout_cases=16,
    tile=TileConfig(tile_size=48, mpp=0.5, width=8, depth=2, blocks=1, embed_dim=16),
    mil=MilConfig(embed_dim=16, hidden=16, attention=8),
    dce=DceConfig(width=4),
)  # fmt: skip


@dataclass
class TaskData:
    """Inputs and labels of one task (held-out set or calibration set), as ONNX feeds."""

    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray


@dataclass
class DemoModels:
    """The trained demo models with their held-out and calibration data."""

    sizes: DemoSizes
    tile: TileEncoder
    probe: TileProbe
    mil: GatedAttentionMIL
    dce: DceNet
    heldout: dict[str, TaskData] = field(default_factory=dict)
    calibration: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Deterministic torch on 2 CPU threads."""
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


def normalize_tiles(tiles: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], (x / 255 - mean) / std (the card's normalization)."""
    x: np.ndarray = tiles.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(H_AND_E_MEAN, np.float32)) / np.asarray(H_AND_E_STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def render_tiles(rng: np.random.Generator, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Half tumour, half normal tiles (some with glass), uint8 [N, S, S, 3], labels [N]."""
    try:
        from export.synthetic.tissue import render_tile
    except ImportError as exc:
        raise TrainingDataMissing(f"export.synthetic.tissue is needed to train the tile model: {exc}") from exc
    labels = (np.arange(count) % 2).astype(np.int64)
    rng.shuffle(labels)
    fractions = np.where(rng.random(count) < 0.25, rng.uniform(0.4, 1.0, count), 1.0)
    tiles = np.stack([render_tile(rng, size, bool(y), float(f)) for y, f in zip(labels, fractions, strict=True)])
    return tiles, labels


def dce_cases(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Preprocessed DCE inputs [N, 5, 16, 64, 64], clinical vectors [N, 10], labels [N]."""
    try:
        from export.synthetic.dce import make_case, relative_signal
    except ImportError as exc:
        raise TrainingDataMissing(f"export.synthetic.dce is needed to train the breast model: {exc}") from exc
    labels = (np.arange(count) % 2).astype(np.int64)
    rng.shuffle(labels)
    volumes, clinical = [], []
    for label in labels:
        case = make_case(rng, bool(label))
        volumes.append(relative_signal(case.volume))  # the appliance's own normalization
        clinical.append(clinical_vector(case.clinical))
    return np.stack(volumes), np.asarray(clinical, np.float32), labels


def _batches(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i : i + size] for i in range(0, n, size)]


def _probe_epoch(encoder: nn.Module, probe: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> float:
    """One epoch of a tile encoder trained through a linear tumour probe (BCE on logits); the mean loss."""
    encoder.train()
    loss_fn = nn.BCEWithLogitsLoss()
    total = 0.0
    for idx in _batches(len(x), 32, rng):
        optimizer.zero_grad()
        loss = loss_fn(probe(encoder(x[idx])), y[idx])
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
    return total / len(x)


def _train_tile(sizes: DemoSizes, rng: np.random.Generator, say: Progress) -> tuple[TileEncoder, TileProbe, np.ndarray, np.ndarray]:
    tiles, labels = render_tiles(rng, sizes.tiles, sizes.tile.tile_size)
    x = torch.from_numpy(normalize_tiles(tiles))
    y = torch.from_numpy(labels).float()
    encoder, probe = TileEncoder(sizes.tile), TileProbe(sizes.tile.embed_dim)
    params = list(encoder.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)
    for epoch in range(sizes.tile_epochs):
        loss = _probe_epoch(encoder, probe, x, y, optimizer, rng)
        say(f"tile encoder epoch {epoch + 1}/{sizes.tile_epochs}: loss {loss:.4f}")
    return encoder.eval(), probe.eval(), x.numpy(), labels


@torch.no_grad()
def embed(encoder: TileEncoder, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """fp32 embeddings of normalized tiles."""
    return np.concatenate([encoder(torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)])


def make_bags(
    rng: np.random.Generator, embeddings: np.ndarray, tile_labels: np.ndarray, count: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Bags of 8-32 embeddings; positive bags hold 10-50 % tumour tiles, negative bags none."""
    tumour, normal = np.flatnonzero(tile_labels == 1), np.flatnonzero(tile_labels == 0)
    labels = (np.arange(count) % 2).astype(np.int64)
    rng.shuffle(labels)
    bags = []
    for label in labels:
        n = int(rng.integers(8, 33))
        k = int(round(n * rng.uniform(0.1, 0.5))) if label else 0
        idx = np.concatenate([rng.choice(tumour, max(k, 1 if label else 0)), rng.choice(normal, n - max(k, 1 if label else 0))])
        bags.append(embeddings[rng.permutation(idx)].astype(np.float32))
    return bags, labels


def _train_mil(sizes: DemoSizes, bags: list[np.ndarray], labels: np.ndarray, rng: np.random.Generator, say: Progress) -> GatedAttentionMIL:
    return train_mil(sizes.mil, bags, labels, sizes.bag_epochs, rng, say)


def train_mil(
    config: MilConfig, bags: list[np.ndarray], labels: np.ndarray, epochs: int, rng: np.random.Generator, say: Progress
) -> GatedAttentionMIL:
    """The gated-attention aggregator trained on bags of (frozen) tile embeddings, one bag per slide."""
    model = GatedAttentionMIL(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.BCELoss()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for i in rng.permutation(len(bags)):
            optimizer.zero_grad()
            probability, _, _ = model(torch.from_numpy(bags[i]))
            loss = loss_fn(probability.clamp(1e-6, 1 - 1e-6), torch.tensor([float(labels[i])]))
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        say(f"slide aggregator epoch {epoch + 1}/{epochs}: loss {total / len(bags):.4f}")
    return model.eval()


def train_demo_vit(
    config: VitConfig, tiles: int = 768, epochs: int = 2, seed: int = 2026, progress: Progress | None = None
) -> VisionTransformer:
    """A small random-initialized ViT (demo, e.g. ViT-S/16) trained with a linear tumour probe on synthetic tiles."""
    say: Progress = progress or (lambda message: logger.info("%s", message))
    seed_everything(seed)
    rng = np.random.default_rng([seed, 21])
    images, labels = render_tiles(rng, tiles, config.tile_size)
    x = (images.astype(np.float32) / np.float32(255.0) - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels).float()
    encoder, probe = VisionTransformer(config), TileProbe(config.output_dim)
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(probe.parameters()), lr=5e-4, weight_decay=0.05)
    for epoch in range(epochs):
        loss = _probe_epoch(encoder, probe, xt, y, optimizer, rng)
        say(f"{config.name} epoch {epoch + 1}/{epochs}: loss {loss:.4f} ({DEMO_NOTICE})")
    return encoder.eval()


def _train_dce(sizes: DemoSizes, rng: np.random.Generator, say: Progress) -> tuple[DceNet, tuple[np.ndarray, np.ndarray]]:
    volumes, clinical, labels = dce_cases(rng, sizes.dce_cases)
    model = DceNet(sizes.dce)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.BCELoss()
    v, c, y = torch.from_numpy(volumes), torch.from_numpy(clinical), torch.from_numpy(labels).float()
    for epoch in range(sizes.dce_epochs):
        model.train()
        total = 0.0
        for idx in _batches(len(v), 8, rng):
            optimizer.zero_grad()
            loss = loss_fn(model(v[idx], c[idx]).squeeze(1).clamp(1e-6, 1 - 1e-6), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        say(f"breast DCE network epoch {epoch + 1}/{sizes.dce_epochs}: loss {total / len(v):.4f}")
    return model.eval(), (volumes, clinical)


def train_demo_models(
    sizes: DemoSizes = DemoSizes(),
    seed: int = 2026,
    progress: Progress | None = None,
    checkpoint: Path | None = None,
) -> DemoModels:
    """Train the three demo models and assemble their held-out and calibration sets.

    With ``checkpoint`` (written by :func:`save_checkpoint`) the weights are loaded
    instead of trained; the data are regenerated from ``seed`` all the same.
    """
    say: Progress = progress or (lambda message: logger.info("%s", message))
    seed_everything(seed)

    def rng(stream: int) -> np.random.Generator:
        """One generator per data set or training loop: the data never depend on how long training ran."""
        return np.random.default_rng([seed, stream])

    state = None
    if checkpoint is not None:
        state = torch.load(checkpoint, weights_only=True)
        sizes = replace(
            sizes, tile_epochs=0, bag_epochs=0, dce_epochs=0, tile=TileConfig(**state["tile"][0]),
            mil=MilConfig(**state["mil"][0]),
            dce=DceConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["dce"][0].items()}),  # type: ignore[arg-type]
        )
        say(f"loading weights from {checkpoint.name}")
    encoder, probe, train_x, train_y = _train_tile(sizes, rng(1), say)
    if state is not None:
        encoder.load_state_dict(state["tile"][1])
        probe.load_state_dict(state["tile"][2])
    held_tiles, held_tile_labels = render_tiles(rng(2), sizes.heldout_tiles, sizes.tile.tile_size)
    held_x = normalize_tiles(held_tiles)
    bags, bag_labels = make_bags(rng(3), embed(encoder, train_x), train_y, sizes.bags)
    mil = _train_mil(sizes, bags, bag_labels, rng(4), say)
    if state is not None:
        mil.load_state_dict(state["mil"][1])
    held_bags, held_bag_labels = make_bags(rng(5), embed(encoder, held_x), held_tile_labels, sizes.heldout_bags)
    dce, (train_v, train_c) = _train_dce(sizes, rng(6), say)
    if state is not None:
        dce.load_state_dict(state["dce"][1])
    held_v, held_c, held_dce_labels = dce_cases(rng(7), sizes.heldout_cases)
    models = DemoModels(sizes=sizes, tile=encoder, probe=probe, mil=mil, dce=dce)
    models.heldout = {
        "pathology_tile": TaskData([{"image": held_x[i : i + 64]} for i in range(0, len(held_x), 64)], held_tile_labels),
        "pathology_slide": TaskData([{"embeddings": b} for b in held_bags], held_bag_labels),
        "breast_mri": TaskData(
            [{"dce": held_v[i : i + 8], "clinical": held_c[i : i + 8]} for i in range(0, len(held_v), 8)],
            held_dce_labels,
        ),
    }
    models.calibration = {
        "pathology_tile": [{"image": train_x[i : i + 16]} for i in range(0, min(len(train_x), 128), 16)],
        "pathology_slide": [{"embeddings": b} for b in bags[:32]],
        "breast_mri": [{"dce": train_v[i : i + 4], "clinical": train_c[i : i + 4]} for i in range(0, min(len(train_v), 24), 4)],
    }
    say(f"{'loaded' if state is not None else 'trained'} the three demo models ({DEMO_NOTICE})")
    return models


def save_checkpoint(models: DemoModels, path: Path) -> None:
    """Configs and weights of the three models (the data are regenerated from the seed)."""
    payload = {
        "tile": (asdict(models.sizes.tile), models.tile.state_dict(), models.probe.state_dict()),
        "mil": (asdict(models.sizes.mil), models.mil.state_dict()),
        "dce": (asdict(models.sizes.dce), models.dce.state_dict()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with durable_file(path) as out:
        torch.save(payload, out)
