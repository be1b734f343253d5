"""``appliance submit SLIDE`` with signed, installed, active tiny engines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from typer.testing import CliRunner

from appliance.cli import app
from engines.bundle import write_bundle
from engines.registry import Registry
from engines.signing import generate_keypair
from tests.pathology.conftest import SlideFiles
from tests.pathology.tiny_engines import MEAN, STD, slide_model, tile_model, tiny_engines


def _install(tmp_path: Path, data_dir: Path) -> None:
    keys = data_dir / "trusted_keys"
    pem = generate_keypair(keys, "vendor").private_key.read_bytes()
    tile_eng, slide_eng = tiny_engines()
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
    emb = tile_eng.infer({"image": image})["embedding"]
    specs = {
        "pathology_tile": (tile_model(), {"image": image}, tile_eng, {
            "tile_size": 64, "mpp": 1.0, "mean": MEAN, "std": STD,
            "inputs": [{"name": "image", "shape": ["N", 3, 64, 64], "dtype": "float32"}],
            "outputs": [{"name": "embedding", "shape": ["N", 16], "dtype": "float32"}]}),
        "pathology_slide": (slide_model(), {"embeddings": emb}, slide_eng, {
            "threshold": 0.5, "labels": ["benign", "tumour"],
            "inputs": [{"name": "embeddings", "shape": ["N", 16], "dtype": "float32"}],
            "outputs": [{"name": "probability", "shape": [1], "dtype": "float32"},
                        {"name": "attention", "shape": ["N"], "dtype": "float32"},
                        {"name": "tile_scores", "shape": ["N"], "dtype": "float32"},
                        {"name": "attention_logits", "shape": ["N"], "dtype": "float32"}],
            "bag_pooling": {"attention_logits": "attention_logits", "tile_values": "tile_scores", "head": "identity"}}),
    }
    registry = Registry(data_dir / "engines", keys)
    for task, (model, inputs, eng, card) in specs.items():
        path = tmp_path / f"{task}.onnx"
        onnx.save_model(model, str(path))
        manifest = {
            "task": task, "version": "1.0.0", "vendor": "tests", "precision": "fp32", "demo": True,
            "backend": {"name": "onnxruntime", "min_version": "1.17"}, "model_card": card,
            "batch_sizes": [1, 4096],
            "golden": {"inputs": inputs, "outputs": eng.infer(inputs), "atol": 1e-4, "rtol": 1e-4},
        }
        bundle = write_bundle(tmp_path / f"{task}-bundle", manifest, {"model.onnx": path}, pem)
        registry.install(bundle, "tests")
        registry.activate(task, "1.0.0", "tests")


def test_submit_scores_a_tiff_and_a_dicom_folder(tmp_path: Path, tumour_slide: SlideFiles) -> None:
    data_dir = tmp_path / "var"
    _install(tmp_path, data_dir)
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[node]\ndata_dir = "{data_dir}"\n')
    runner = CliRunner()
    res = runner.invoke(app, ["submit", str(tumour_slide.tiff), "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["class"] == "tumour" and out["probability"] > 0.6 and out["tiles_scored"] > 20
    assert out["engine"] == "pathology_slide 1.0.0 (fp32)" and len(out["top_tiles"]) == 5
    res = runner.invoke(app, ["submit", str(tumour_slide.jpeg[0].parent), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "tumour (probability" in res.stdout and "demo model, not for clinical use" in res.stdout


def test_submit_without_engines_fails_with_a_message(tmp_path: Path, tumour_slide: SlideFiles) -> None:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\n')
    res = CliRunner().invoke(app, ["submit", str(tumour_slide.tiff), "--config", str(cfg)])
    assert res.exit_code != 0
    assert "no active engine for task 'pathology_tile'" in str(res.exception) + res.output
