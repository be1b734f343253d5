"""A slide job end to end with a ViT-S/16 tile-encoder bundle (random weights) through ``appliance serve``.

The encoder is a full-depth ViT-S/16 in timm's layout with random weights at
64 px tiles; its aggregator is trained on its frozen embeddings; both go through
the export pipeline (fp32, gate, ORT fusions), are signed, installed and
activated; a synthetic DICOM WSI is sent by C-STORE, and the SR that reaches
Orthanc names the encoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import torch

from appliance.demo._scanner import send_study, write_slide_study
from engines.registry import Registry
from export.demo import ensure_demo_key
from export.encoder import EncoderData, encoder_specs
from export.gate import GateConfig
from export.models.vit import VisionTransformer, preset
from export.pipeline import convert_task, sign_bundles
from tests.appliance import _e2e
from tests.peers import Orthanc

SM_ROUTE = {"pipeline": "pathology", "match": {"Modality": "SM"}, "stable_seconds": 1, "priority": 5}
TINY = EncoderData(train_slides=6, heldout_slides=4, tiles_per_slide=4, calibration_tiles=8, slide_px=512, batch=8,
                   mil_epochs=3)  # fmt: skip


def _install_vit_engines(work: Path, data_dir: Path) -> dict[str, str]:
    torch.manual_seed(3)
    encoder = VisionTransformer(preset("vit-s16", tile_size=64))
    specs, _ = encoder_specs(encoder, TINY, demo=True, source="random weights (test)")
    trusted = data_dir / "trusted_keys"
    key = ensure_demo_key(work / "keys", trusted)
    registry = Registry(data_dir / "engines", trusted)
    versions = {}
    for task, spec in specs.items():
        report = convert_task(spec, work / task, ("fp32",), GateConfig(min_cosine_mean=0.0, min_cosine_p1=0.0))
        (bundle,) = sign_bundles(spec, report, work / "bundles", key, "0.2.0", "test-vendor", True)
        manifest = registry.install(bundle, "test")
        registry.activate(task, manifest.version, "test")
        versions[task] = manifest.version
    return versions


@pytest.fixture
def serves() -> Iterator[list[_e2e.Serve]]:
    started: list[_e2e.Serve] = []
    yield started
    for serve in started:
        serve.close()


def _strings(ds: pydicom.Dataset) -> list[str]:
    return [str(e.value) for e in ds.iterall() if e.VR in ("LO", "UT", "ST", "LT", "SH")]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_slide_job_with_a_vit_s16_encoder_bundle_ends_in_an_sr_naming_it(
    tmp_path: Path, orthanc: Orthanc, serves: list[_e2e.Serve]
) -> None:
    data_dir = tmp_path / "var"
    versions = _install_vit_engines(tmp_path / "export", data_dir)
    config = tmp_path / "appliance.toml"
    node_port = _e2e.write_config(config, data_dir, orthanc, [SM_ROUTE])
    slide = write_slide_study(tmp_path / "scanner" / "slide", seed=5, size=1024)
    serve = _e2e.Serve(config, node_port, tmp_path / "serve.log")
    serves.append(serve)
    serve.start()
    send_study(slide, "127.0.0.1", node_port, _e2e.NODE_AE)
    srs = _e2e.wait_for(lambda: orthanc.find_sr(slide.study_uid), 300, "the SR of the slide in Orthanc", serve.tail)
    with orthanc.rest() as client:
        raw = client.get(f"/instances/{srs[0]['ID']}/file").raise_for_status().content
    strings = _strings(pydicom.dcmread(BytesIO(raw)))
    assert any("vit-s16" in s for s in strings), strings
    assert any(versions["pathology_slide"] in s for s in strings), strings
    job = [j for j in _e2e.jobs(data_dir) if j["study_uid"] == slide.study_uid][0]
    assert job["state"] == "succeeded" and job["pipeline"] == "pathology", job
    assert serve.terminate(timeout=30) == 0, serve.tail()
