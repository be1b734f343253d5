"""Export a ViT tile encoder (a site's foundation-model checkpoint, or the demo ViT-S) with its aggregator.

The foundation-model pattern: the encoder is frozen; tiles cut from slides
(synthetic ones here: :mod:`export.synthetic.slide`) are embedded once in fp32,
the gated-attention MIL aggregator is trained on bags of those embeddings (one
bag per slide), and two tasks are exported: ``pathology_tile`` (the encoder,
gated on embedding cosine to fp32 and on the slide-score AUC of the aggregator
fed each precision's embeddings) and ``pathology_slide`` (the aggregator whose
input width is the encoder's embedding size).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from export.int8 import TRANSFORMER_INT8
from export.models.mil import GatedAttentionMIL, MilConfig
from export.models.vit import VisionTransformer, VitConfig
from export.pipeline import EncoderGate, TaskExport
from export.train import DEMO_NOTICE, TaskData, train_mil

logger = logging.getLogger(__name__)

Say = Callable[[str, str], None]  # (stage, message)
Count = Callable[[str, int, int], None]  # (stage, done, total): a progress bar


@dataclass(frozen=True)
class EncoderData:
    """How many synthetic slides and tiles the aggregator training, calibration and gate use."""

    train_slides: int = 24
    heldout_slides: int = 16
    tiles_per_slide: int = 16
    calibration_tiles: int = 64
    slide_px: int = 2048  #: side of each synthetic slide at the model's mpp
    batch: int = 16
    mil_epochs: int = 20
    seed: int = 2026


#: a few seconds of work for tests
QUICK_ENCODER_DATA = EncoderData(
    train_slides=8, heldout_slides=8, tiles_per_slide=6, calibration_tiles=16, slide_px=768, batch=8, mil_epochs=6
)


def slide_tiles(
    seed: int, slides: int, tiles_per_slide: int, tile_size: int, mpp: float, slide_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 tiles [slides * tiles_per_slide, S, S, 3] cut from tissue of synthetic slides; slide labels [slides].

    Odd slides hold tumour; on them half the tiles are taken from tumour where there is any.
    """
    from export.synthetic.slide import make_slide

    rng = np.random.default_rng([seed, 17])
    tiles = np.empty((slides * tiles_per_slide, tile_size, tile_size, 3), np.uint8)
    labels = (np.arange(slides) % 2).astype(np.int64)
    for i, label in enumerate(labels):
        # one texture pool for every slide (it is keyed by seed % 7 and costly to render)
        slide = make_slide(7 * (seed * 1000 + i) + 3, slide_px, slide_px, bool(label), mpp=mpp)
        positions = [(x, y) for y in range(0, slide_px - tile_size + 1, tile_size // 2)
                     for x in range(0, slide_px - tile_size + 1, tile_size // 2)]  # fmt: skip
        centre = np.asarray([((y + tile_size // 2) // slide.cell, (x + tile_size // 2) // slide.cell) for x, y in positions])
        tissue = slide.tissue[centre[:, 0], centre[:, 1]] > 0.5
        tumour = slide.tumour_mask[centre[:, 0], centre[:, 1]] > 0.3
        candidates = np.flatnonzero(tissue) if tissue.any() else np.arange(len(positions))
        chosen = rng.choice(candidates, tiles_per_slide, replace=len(candidates) < tiles_per_slide)
        hot = np.flatnonzero(tumour & tissue)
        if label and hot.size:
            half = tiles_per_slide // 2
            chosen[:half] = rng.choice(hot, half, replace=hot.size < half)
        for j, k in enumerate(chosen):
            x, y = positions[k]
            tiles[i * tiles_per_slide + j] = slide.render(0, x, y, tile_size, tile_size)
    return tiles, labels


def normalize(tiles: np.ndarray, config: VitConfig) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], (x / 255 - mean) / std: the model card's normalization."""
    scaled: np.ndarray = tiles.astype(np.float32) / np.float32(255.0)
    x: np.ndarray = (scaled - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


@torch.no_grad()
def embed_tiles(encoder: torch.nn.Module, images: np.ndarray, batch: int, stage: str, count: Count | None) -> np.ndarray:
    """fp32 embeddings of normalized tiles, batch by batch, with a progress bar."""
    out = []
    for start in range(0, len(images), batch):
        out.append(encoder(torch.from_numpy(images[start : start + batch])).numpy())
        if count is not None:
            count(stage, min(start + batch, len(images)), len(images))
    return np.concatenate(out)


def vit_card(config: VitConfig, demo: bool, source: str) -> dict[str, Any]:
    """The tile encoder's model card: embedding size, normalization, tile size and mpp, architecture."""
    notice = {"notice": DEMO_NOTICE, "demo": True} if demo else {}
    return {
        **notice,
        "name": f"{config.name} tile encoder",
        "encoder": config.name,
        "description": f"Pathology foundation-model tile encoder ({config.name}, timm VisionTransformer layout): "
        f"H&E tile to embedding, read-out {config.readout}; weights: {source}",
        "inputs": [{"name": "image", "shape": ["N", 3, config.tile_size, config.tile_size], "dtype": "float32",
                    "layout": "NCHW", "color": "RGB", "scale": "0..1 then (x - mean) / std"}],
        "outputs": [{"name": "embedding", "shape": ["N", config.output_dim], "dtype": "float32"}],
        "tile_size": config.tile_size, "mpp": config.mpp, "mean": list(config.mean), "std": list(config.std),
        "embed_dim": config.output_dim, "embedding_size": config.output_dim, "readout": config.readout,
        "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in config.as_dict().items()},
    }  # fmt: skip


def _slide_card(mil: MilConfig, encoder: str, demo: bool) -> dict[str, Any]:
    notice = {"notice": DEMO_NOTICE, "demo": True} if demo else {}
    return {
        **notice,
        "name": f"gated-attention MIL on {encoder}",
        "encoder": encoder,
        "description": f"Gated-attention MIL aggregator (Ilse et al. 2018) on {encoder} tile embeddings",
        "inputs": [{"name": "embeddings", "shape": ["N", mil.embed_dim], "dtype": "float32"}],
        "outputs": [
            {"name": "probability", "shape": [1], "dtype": "float32", "meaning": "probability of tumour in the slide"},
            {"name": "attention", "shape": ["N"], "dtype": "float32", "meaning": "attention per tile, sums to 1"},
            {"name": "tile_scores", "shape": ["N"], "dtype": "float32", "meaning": "tumour score per tile in [0, 1]"},
        ],
        "threshold": 0.5, "labels": ["no tumour", "tumour"],
        "codes": {"finding": {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"}},
        "architecture": mil.as_dict(),
    }  # fmt: skip


def encoder_specs(
    encoder: VisionTransformer,
    data: EncoderData = EncoderData(),
    demo: bool = False,
    source: str = "site checkpoint",
    say: Say | None = None,
    count: Count | None = None,
) -> tuple[dict[str, TaskExport], dict[str, float]]:
    """``pathology_tile`` and ``pathology_slide`` export specs for a frozen ``encoder``; and training figures."""
    say = say or (lambda stage, message: logger.info("%s: %s", stage, message))
    cfg = encoder.config
    encoder = encoder.eval()
    say("tiles", f"cutting {cfg.tile_size} px tiles from {data.train_slides + data.heldout_slides} synthetic slides")
    train_tiles, train_labels = slide_tiles(data.seed, data.train_slides, data.tiles_per_slide, cfg.tile_size, cfg.mpp, data.slide_px)
    held_tiles, held_labels = slide_tiles(data.seed + 1, data.heldout_slides, data.tiles_per_slide, cfg.tile_size, cfg.mpp, data.slide_px)
    train_x, held_x = normalize(train_tiles, cfg), normalize(held_tiles, cfg)
    del train_tiles, held_tiles
    train_e = embed_tiles(encoder, train_x, data.batch, "embed training tiles", count)
    held_e = embed_tiles(encoder, held_x, data.batch, "embed held-out tiles", count)
    t = data.tiles_per_slide
    train_bags = [train_e[i * t : (i + 1) * t] for i in range(data.train_slides)]
    held_slices = [slice(i * t, (i + 1) * t) for i in range(data.heldout_slides)]
    mil_config = MilConfig(embed_dim=cfg.output_dim, hidden=64, attention=32)
    torch.manual_seed(data.seed)
    mil = train_mil(mil_config, train_bags, train_labels, data.mil_epochs, np.random.default_rng([data.seed, 4]),
                    lambda m: say("train", m))  # fmt: skip

    @torch.no_grad()
    def aggregate(embeddings: np.ndarray) -> float:
        return float(mil(torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)))[0])

    held_scores = np.asarray([aggregate(held_e[s]) for s in held_slices])
    from export.gate import roc_auc

    figures = {"heldout_slide_auc_fp32": roc_auc(held_labels, held_scores)} if 0 < held_labels.sum() < len(held_labels) else {}
    say("train", f"aggregator on frozen {cfg.name} embeddings: held-out slide AUC {figures.get('heldout_slide_auc_fp32', float('nan')):.3f}")
    b = data.batch
    tile = TaskExport(
        "pathology_tile", encoder, {"image": torch.from_numpy(held_x[:2])}, ("embedding",), {"image": {0: "batch"}},
        vit_card(cfg, demo, source), (1, 256),
        TaskData([{"image": held_x[i : i + b]} for i in range(0, len(held_x), b)], held_labels),
        [{"image": train_x[i : i + b]} for i in range(0, min(len(train_x), data.calibration_tiles), b)],
        lambda outputs: outputs[0][:, 0], 0.5, {"image": held_x[:2]},
        int8=TRANSFORMER_INT8,
        encoder_gate=EncoderGate(held_slices, aggregate), transformer=(cfg.num_heads, cfg.embed_dim),
    )  # fmt: skip
    slide = TaskExport(
        "pathology_slide", mil, {"embeddings": torch.from_numpy(held_e[held_slices[0]])},
        ("probability", "attention", "tile_scores"), {"embeddings": {0: "bag"}}, _slide_card(mil_config, cfg.name, demo),
        (1, 65536), TaskData([{"embeddings": held_e[s]} for s in held_slices], held_labels),
        [{"embeddings": bag} for bag in train_bags], lambda outputs: outputs[0], 0.5,
        {"embeddings": held_e[held_slices[0]][:8]},
    )  # fmt: skip
    return {"pathology_tile": tile, "pathology_slide": slide}, figures


__all__ = ["EncoderData", "QUICK_ENCODER_DATA", "embed_tiles", "encoder_specs", "normalize", "slide_tiles", "vit_card"]
