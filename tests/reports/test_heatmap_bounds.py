"""Heat maps of scanner-sized slides stay bounded: the SEG and the capture are max-pooled beyond MAX_SIDE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from appliance.findings import Finding, HeatMap, StudyResult
from appliance.reports import DeviceInfo
from appliance.reports.build import encode
from appliance.reports import heatmap
from appliance.reports.heatmap import bounded_grid, build_heatmap_seg
from tests.peers import dciodvfy
from tests.reports._sources import engine, make_wsi_level

DEVICE = DeviceInfo.from_serial("SN-TEST-1", name="APPLIANCE")


def test_bounded_grid_max_pools_and_keeps_empty_blocks_empty() -> None:
    scores = np.full((5, 7), np.nan, np.float32)
    scores[0, 0], scores[1, 1], scores[4, 6] = 0.2, 0.9, 0.4
    pooled, factor = bounded_grid(scores, max_side=3)
    assert factor == 3 and pooled.shape == (2, 3)
    assert pooled[0, 0] == np.float32(0.9) and pooled[1, 2] == np.float32(0.4)
    assert np.isnan(pooled[0, 1]) and np.isnan(pooled[1, 0])
    same, one = bounded_grid(scores, max_side=7)
    assert one == 1 and same is scores


def test_a_heat_map_of_millions_of_tiles_becomes_a_bounded_seg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heatmap, "MAX_SIDE", 512)  # the rule at a size that builds in a second
    source = make_wsi_level(tmp_path / "level.dcm", rows=512, columns=512, tile=256, seed="huge")
    header = pydicom.dcmread(source.path, stop_before_pixels=True)
    rows, cols, tile_px = 5000 * 16, 3000 * 16, 16  # 15 million tiles of 16 px (8 um at 0.5 um/px)
    header.TotalPixelMatrixRows, header.TotalPixelMatrixColumns = rows, cols
    scores = np.random.default_rng(0).random((5000, 3000)).astype(np.float32)
    scores[:100] = np.nan
    heat = HeatMap(scores, tile_px, source, rows, cols, (0.0005, 0.0005))
    finding = Finding("pathology", 0.7, 0.5, engine("pathology_slide"), (source,), heat_map=heat, tiles_scored=1)
    result = StudyResult("job-huge", source.study_uid, (finding,))
    seg = build_heatmap_seg(result, 1, finding, DEVICE, header)
    factor = -(-5000 // 512)
    assert (int(seg.TotalPixelMatrixRows), int(seg.TotalPixelMatrixColumns)) == (-(-5000 // factor), -(-3000 // factor))
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == [0.0005 * tile_px * factor] * 2
    path = tmp_path / "seg.dcm"
    path.write_bytes(encode(seg))
    assert len(path.read_bytes()) < 2 * 512 * 512
    errors, output = dciodvfy(path)
    assert errors == [], output
