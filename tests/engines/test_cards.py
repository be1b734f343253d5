"""Typed model cards: built and checked when a manifest is read (install), round-tripped by the export."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.cards import (
    BagPooling,
    BreastMriCard,
    ModelCard,
    PathologySlideCard,
    PathologyTileCard,
    card_from_dict,
)
from engines.errors import BundleRejected
from engines.manifest import Manifest
from export.demo import demo_cards
from export.encoder import _slide_card, vit_card
from export.models.mil import MilConfig
from export.models.vit import PRESETS
from export.train import DemoSizes
from tests.engines._helpers import make_bundle

DCE = {"inputs": [{"name": "dce", "shape": ["N", 5, 16, 64, 64], "dtype": "float32"},
                  {"name": "clinical", "shape": ["N", 10], "dtype": "float32"}],
       "outputs": [{"name": "probability", "shape": ["N", 1], "dtype": "float32"}]}
#: a card as the demo wrote it before phase timing (issue 13): phase_count only
OLD_MRI = {**DCE, "threshold": 0.5, "phase_count": 5, "grid": [16, 64, 64], "spacing_mm": [3.0, 1.5, 1.5]}
#: a slide card without bag_pooling, a tile card without the ViT encoder keys
OLD_SLIDE = {"inputs": [{"name": "embeddings", "shape": ["N", 16], "dtype": "float32"}],
             "outputs": [{"name": "probability", "shape": [1], "dtype": "float32"},
                         {"name": "tile_scores", "shape": ["N"], "dtype": "float32"}], "threshold": 0.5}
OLD_TILE = {"inputs": [{"name": "image", "shape": ["N", 3, 64, 64], "dtype": "float32"}],
            "outputs": [{"name": "embedding", "shape": ["N", 16], "dtype": "float32"}],
            "tile_size": 64, "mpp": 1.0, "mean": [0.8, 0.6, 0.76], "std": [0.15, 0.2, 0.15]}


def _export_cards() -> dict[str, tuple[str, dict[str, Any]]]:
    sizes = DemoSizes()
    demo = demo_cards(sizes, np.linspace(-1, 1, sizes.tile.embed_dim), 0.25)
    cards = {f"demo {task}": (task, card) for task, card in demo.items()}
    for name in sorted(PRESETS):
        cards[f"{name} tile"] = ("pathology_tile", vit_card(PRESETS[name], demo=False, source="a site checkpoint"))
        mil = MilConfig(embed_dim=PRESETS[name].output_dim)
        cards[f"{name} slide"] = ("pathology_slide", _slide_card(mil, name, True))
    return cards


@pytest.mark.parametrize("name", sorted(_export_cards()))
def test_cards_written_by_the_export_round_trip(name: str) -> None:
    task, written = _export_cards()[name]
    card = card_from_dict(task, copy.deepcopy(written))
    assert type(card).task == task
    again = card_from_dict(task, card.to_dict())
    assert again == card and again.to_dict() == card.to_dict()
    # nothing the export wrote is lost or changed: the free keys come back as they were
    assert {k: v for k, v in card.to_dict().items() if k in written} == written


def test_the_demo_cards_are_typed_with_their_values() -> None:
    sizes = DemoSizes()
    demo = demo_cards(sizes, np.zeros(sizes.tile.embed_dim), 0.0)
    tile = card_from_dict("pathology_tile", demo["pathology_tile"])
    slide = card_from_dict("pathology_slide", demo["pathology_slide"])
    mri = card_from_dict("breast_mri", demo["breast_mri"])
    assert isinstance(tile, PathologyTileCard) and tile.tile_size == sizes.tile.tile_size and len(tile.mean) == 3
    assert isinstance(slide, PathologySlideCard) and slide.threshold == 0.5 and slide.labels == ("no tumour", "tumour")
    assert slide.bag_pooling == BagPooling("attention_logits", "tile_logits", "sigmoid")
    assert isinstance(mri, BreastMriCard) and mri.phase_count == 1 + len(mri.post_contrast_times_s or ())
    assert mri.clinical_variables == ("age", "er", "her2", "ki67", "grade")


@pytest.mark.parametrize(("task", "card"), [("breast_mri", OLD_MRI), ("pathology_slide", OLD_SLIDE),
                                            ("pathology_tile", OLD_TILE)])
def test_old_cards_stay_valid(task: str, card: dict[str, Any]) -> None:
    typed = card_from_dict(task, card)
    assert type(typed).task == task
    if isinstance(typed, BreastMriCard):
        assert typed.post_contrast_times_s is None and typed.crop == "breast"
    if isinstance(typed, PathologySlideCard):
        assert typed.bag_pooling is None and typed.labels == ()
    if isinstance(typed, PathologyTileCard):
        assert typed.encoder is None and typed.embedding_size is None


@pytest.mark.parametrize(("task", "card", "message"), [
    ("breast_mri", {k: v for k, v in OLD_MRI.items() if k != "threshold"}, r"model_card lacks 'threshold'"),
    ("breast_mri", {**OLD_MRI, "threshold": 1.5}, r"model_card.threshold 1.5 must be a number >= 0 and <= 1"),
    ("breast_mri", {**OLD_MRI, "treshold": 0.4}, r"key 'treshold' is not a key of a breast_mri card; did you mean "
                                                 r"'threshold'"),
    ("breast_mri", {**OLD_MRI, "clinical_variables": ["age", "bmi"]},
     r"model_card.clinical_variables\[1\] 'bmi' is not one of age, er, her2, ki67, grade"),
    ("breast_mri", {**OLD_MRI, "phase_rules": ["pre(", "post"]},
     r"model_card.phase_rules\[0\] 'pre\(' is not a regular"),
    ("breast_mri", {**OLD_MRI, "grid": [16, 64]}, r"model_card.grid \[16, 64\] must be a list of 3 values"),
    ("breast_mri", {**OLD_MRI, "phase_count": 4}, r"'dce' shape \['N', 5, 16, 64, 64\] does not match phase_count 4"),
    ("breast_mri", {**OLD_MRI, "kinetics": "yes"}, r"model_card.kinetics 'yes' must be true or false"),
    ("pathology_slide", {k: v for k, v in OLD_SLIDE.items() if k != "threshold"}, r"needs 'threshold'"),
    ("pathology_slide", {**OLD_SLIDE, "outputs": OLD_SLIDE["outputs"][:1]},
     r"pathology_slide model_card.outputs must include 'tile_scores'"),
    ("pathology_slide", {**OLD_SLIDE, "labels": "tumour"}, r"model_card.labels 'tumour' must be a list of strings"),
    ("pathology_tile", {k: v for k, v in OLD_TILE.items() if k != "std"}, r"needs 'std'"),
    ("pathology_tile", {**OLD_TILE, "mean": [0.5, 0.5]}, r"model_card.mean \[0.5, 0.5\] must be a list of 3 numbers"),
    ("pathology_tile", {**OLD_TILE, "std": [0.1, 0.0, 0.1]}, r"model_card.std .* must be a list of 3 positive"),
    ("pathology_tile", {**OLD_TILE, "mpp": -1}, r"model_card.mpp -1 must be a number > 0"),
    ("pathology_tile", {**OLD_TILE, "tile_size": 0}, r"model_card.tile_size 0 must be a whole number >= 1"),
])
def test_a_bad_card_is_refused_naming_the_key(task: str, card: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleRejected, match=message):
        card_from_dict(task, card)


def test_other_tasks_get_the_base_card_with_free_keys() -> None:
    card = card_from_dict("test_task", {**OLD_SLIDE, "threshold": "anything", "site_note": [1, 2]})
    assert type(card) is ModelCard and card.input_names == ("embeddings",)
    assert card.to_dict()["site_note"] == [1, 2] and card.to_dict()["threshold"] == "anything"


def test_install_refuses_a_bad_card_before_any_job(tmp_path: Path, vendor_pem: bytes) -> None:
    """The manifest (what verify and install read) carries the typed card; a bad one is refused there."""
    fields = {"format": 1, "task": "breast_mri", "version": "1.0.0", "precision": "fp32",
              "backend": {"name": "onnxruntime"}, "model_file": "m.onnx", "golden": {"file": "g.npz"},
              "files": {"m.onnx": "0" * 64, "g.npz": "1" * 64}}
    manifest = Manifest.from_dict({**fields, "model_card": OLD_MRI})
    assert isinstance(manifest.card, BreastMriCard) and manifest.card.threshold == 0.5
    assert manifest.inputs == manifest.card.inputs and manifest.model_card == OLD_MRI
    with pytest.raises(BundleRejected, match=r"breast_mri model card needs .*model_card lacks 'threshold'"):
        Manifest.from_dict({**fields, "model_card": {k: v for k, v in OLD_MRI.items() if k != "threshold"}})
    with pytest.raises(BundleRejected, match=r"model_card.threshold 'high' must be a number"):
        make_bundle(tmp_path / "b", vendor_pem, task="pathology_slide",
                    model_card={**OLD_SLIDE, "threshold": "high"})
