"""fp32, fp16 and int8 bundles of every demo model install with the engines registry and run on ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from appliance.cli import app
from engines.registry import Registry
from export.onnx_export import run_onnx
from tests.export.conftest import Exported

pytestmark = pytest.mark.slow  # export training: the session's demo models, exported and installed

TASKS = ("pathology_tile", "pathology_slide", "breast_mri")
PRECISIONS = ("fp32", "fp16", "int8")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("task", TASKS)
def test_bundle_installs_activates_and_runs(exported: Exported, task: str, precision: str) -> None:
    registry = Registry(exported.data_dir / "engines", exported.trusted_keys_dir)
    version = f"0.1.0-demo+{precision}"
    assert version in registry.versions(task)
    registry.activate(task, version, "test")
    try:
        engine = registry.load_active(task)
        try:
            manifest = engine.manifest
            assert manifest.precision == precision and manifest.demo
            assert "not for clinical use" in manifest.model_card["notice"]
            assert manifest.metrics["gate"]["passed"] is True
            spec = exported.specs[task]
            feed = spec.heldout.feeds[0]
            outputs = engine.infer(feed)
            model = exported.cache / "work" / task / precision / "model.onnx"
            direct = run_onnx(model, feed)
            for name, expected in zip(spec.output_names, direct, strict=True):
                assert outputs[name].shape == expected.shape
                assert np.allclose(outputs[name], expected, atol=2e-3, rtol=1e-2)
        finally:
            engine.close()
    finally:
        registry.activate(task, exported.active[task], "test")


def test_fp16_model_is_mixed_precision_with_fp32_io(exported: Exported) -> None:
    model = onnx.load(str(exported.cache / "work" / "pathology_tile" / "fp16" / "model.onnx"))
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types.values()
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*model.graph.input, *model.graph.output])
    reduce_inputs = [n.input[0] for n in model.graph.node if n.op_type == "ReduceMean"]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert reduce_inputs and all(producers[i].op_type == "Cast" for i in reduce_inputs)  # pooled in fp32


def test_manifest_records_the_gate_for_every_precision(exported: Exported) -> None:
    for task in TASKS:
        for precision in PRECISIONS:
            manifest = json.loads((exported.cache / "bundles" / f"{task}-0.1.0-demo-{precision}" / "manifest.json").read_text())
            gate = manifest["metrics"]["gate"]
            assert gate["precision"] == precision and 0.0 <= gate["auc"] <= 1.0 and gate["cases"] > 0


def test_install_demo_cli_reuses_the_cached_engines(exported: Exported, tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(f'[node]\ndata_dir = "{exported.data_dir}"\n')
    result = CliRunner().invoke(app, ["engines", "install-demo", "--config", str(config), "--quick"])
    assert result.exit_code == 0, result.output
    assert "reusing cached demo bundles" in result.output
    assert "not for clinical use" in result.output
    assert Registry(exported.data_dir / "engines", exported.trusted_keys_dir).active_versions() == exported.active


def test_export_cli_writes_signed_bundles_and_a_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["export", "--quick", "--out", str(out), "--task", "pathology_slide", "--precision", "int8",
              "--triton", str(tmp_path / "triton")],
    )
    assert result.exit_code == 0, result.output
    assert "pathology_slide" in result.output and "int8" in result.output
    from engines.bundle import verify_bundle

    manifest = verify_bundle(out / "bundles" / "pathology_slide-0.1.0-int8", out / "trusted_keys")
    assert manifest.precision == "int8" and manifest.demo
    config = (tmp_path / "triton" / "pathology_slide_int8" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size" not in config  # 0: not batched
    served = verify_bundle(out / "bundles" / "pathology_slide-0.1.0-int8-triton", out / "trusted_keys")
    assert served.backend == {"name": "triton", "model_name": "pathology_slide_int8"}
    assert served.version == "0.1.0+int8.triton" and served.model_card == manifest.model_card


def test_external_data_bundle_installs_and_runs(exported: Exported, tmp_path: Path) -> None:
    """A model whose weights live in model.onnx.data: hashed, shipped, verified and run together."""
    from export.demo import QUICK_GATE
    from export.pipeline import convert_task, sign_bundles

    spec = exported.specs["pathology_slide"]
    report = convert_task(spec, tmp_path / "work", ("fp32",), QUICK_GATE, external_data=True)
    assert [f.name for f in report.results["fp32"].files] == ["model.onnx", "model.onnx.data"]
    key = (exported.cache / "keys" / "demo-vendor.key").read_bytes()
    (bundle,) = sign_bundles(spec, report, tmp_path / "bundles", key, "9.9.9", "demo-vendor", True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"model.onnx", "model.onnx.data"} <= set(manifest["files"])
    registry = Registry(tmp_path / "engines", exported.trusted_keys_dir)
    registry.install(bundle, "test")
    registry.activate("pathology_slide", "9.9.9+fp32", "test")
    engine = registry.load_active("pathology_slide")
    try:
        outputs = engine.infer(spec.heldout.feeds[1])
        assert float(outputs["attention"].sum()) == pytest.approx(1.0, abs=1e-5)
    finally:
        engine.close()


def test_checkpoint_reloads_the_same_models_and_data(exported: Exported, tmp_path: Path) -> None:
    import torch

    from export.train import QUICK_SIZES, save_checkpoint, train_demo_models

    save_checkpoint(exported.models, tmp_path / "demo.pt")
    loaded = train_demo_models(QUICK_SIZES, checkpoint=tmp_path / "demo.pt")
    for a, b in [(exported.models.tile, loaded.tile), (exported.models.mil, loaded.mil), (exported.models.dce, loaded.dce)]:
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert np.array_equal(exported.models.heldout["breast_mri"].labels, loaded.heldout["breast_mri"].labels)
