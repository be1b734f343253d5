"""Slides end to end: ``appliance serve`` as a process, dcmtk ``storescu`` as the scanner, Orthanc as the PACS.

1. Issue 14: a slide made by ``OrthancWSIDicomizer --compression jpeg2000 --max-size 2`` (levels
   split into concatenations, no Image Type, no Frame of Reference) is scored and its SR, which
   says why no heat-map SEG could be made over such a slide, passes dciodvfy.
2. Issue 21: ``kill -9`` of ``appliance serve`` at 60 % of a slide job; after the restart the job
   resumes from its saved tiles (the log says from which), re-encodes fewer than half of them and
   delivers the same score and heat map as an uninterrupted run of the same slide.
"""

from __future__ import annotations

import re
import subprocess
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from export.synthetic.slide import make_slide, write_dicom_wsi, write_tiff
from tests.appliance import _e2e
from tests.appliance.test_e2e import _start, appliance_dir, engine_cache, serves  # noqa: F401 - fixtures
from tests.pathology.test_organizations import orthanc_dicomize
from tests.peers import Orthanc, dciodvfy, peer_env

STORESCU = Path("/usr/bin/storescu")
SM_ROUTE = {"pipeline": "pathology", "match": {"Modality": "SM"}, "stable_seconds": 1, "priority": 5}
#: the killed slide: a 2048 px synthetic slide repeated MOSAIC x MOSAIC times (about 6,000 tissue tiles of
#: the demo engine), long enough on 2 cores to be killed at 60 % with a checkpoint each half second
MOSAIC = 6
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def storescu(paths: list[Path], port: int, *options: str) -> None:
    """Send files with dcmtk's storescu (``options`` choose the transfer syntaxes proposed)."""
    cmd = [str(STORESCU), "-aet", _e2e.SCANNER_AE, "-aec", _e2e.NODE_AE, *options, "127.0.0.1", str(port),
           *map(str, paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=peer_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _job(data_dir: Path, study_uid: str) -> dict[str, Any] | None:
    found = [j for j in _e2e.jobs(data_dir) if j["study_uid"] == study_uid]
    return found[0] if found else None


def _stored(orthanc: Orthanc, study_uid: str) -> dict[str, pydicom.Dataset]:
    """SOP Class UID -> the dataset, of the appliance's objects Orthanc holds for the study."""
    out = {}
    with orthanc.rest() as client:
        for found in client.post("/tools/find", json={"Level": "Instance", "Query": {
                "StudyInstanceUID": study_uid, "Modality": "SR\\SEG\\OT"}}).raise_for_status().json():
            raw = client.get(f"/instances/{found}/file").raise_for_status().content
            ds = pydicom.dcmread(BytesIO(raw))
            out[str(ds.SOPClassUID)] = ds
    return out


def _sr_text(ds: pydicom.Dataset) -> str:
    found: list[str] = []

    def walk(items: Any) -> None:
        for item in items:
            if "TextValue" in item:
                found.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return "\n".join(found)


def _probability(sr: pydicom.Dataset) -> float:
    """The SR's (111047, DCM, "Probability of cancer")."""
    values: list[float] = []

    def walk(items: Any) -> None:
        for item in items:
            if item.get("ValueType") == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == "111047":
                values.append(float(item.MeasuredValueSequence[0].NumericValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    assert len(values) == 1, values
    return values[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_orthanc_wsi_dicomizer_concatenated_jpeg2000_slide_is_scored_and_its_sr_passes_dciodvfy(
    tmp_path: Path, appliance_dir: Path, orthanc: Orthanc, serves: list[_e2e.Serve]
) -> None:
    tiff = write_tiff(make_slide(41, 2048, 2048, True), tmp_path / "scan.tiff")
    paths = orthanc_dicomize(tiff, tmp_path / "dicomized", "jpeg2000", max_size_mb=1)  # the 2 MB of a bigger scan
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert any(int(h.get("InConcatenationNumber", 0) or 0) > 1 for h in headers), "a level split into parts"
    study_uid = str(headers[0].StudyInstanceUID)
    config = tmp_path / "appliance.toml"
    node_port = _e2e.write_config(config, appliance_dir, orthanc, [SM_ROUTE])
    serve = _start(serves, config, node_port)
    storescu(paths, node_port, "-R", "-xv")  # JPEG 2000 lossless, as the files are

    sr_rows = _e2e.wait_for(lambda: orthanc.find_sr(study_uid), 240, "the SR in Orthanc", serve.tail)
    job = _e2e.wait_for(lambda: (j := _job(appliance_dir, study_uid)) and j["state"] == "succeeded" and j,
                        60, "the job to succeed", serve.tail)
    assert len(sr_rows) == 1 and job["attempts"] == 1, job
    objects = _stored(orthanc, study_uid)
    sr = objects["1.2.840.10008.5.1.4.1.1.88.34"]
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    errors, output = dciodvfy(sr_path)
    assert errors == [], output
    assert 0.0 <= _probability(sr) <= 1.0
    text = _sr_text(sr)
    assert SEG_CLASS not in objects
    assert "heat map (Segmentation) of finding 1 was not produced" in text and "Frame of Reference" in text, text
    assert re.search(r"[1-9]\d* tissue tiles", text), text
    assert serve.terminate(timeout=30) == 0, serve.tail()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_at_60_percent_resumes_from_saved_tiles_with_the_same_score_and_heat_map(
    tmp_path: Path, appliance_dir: Path, orthanc: Orthanc, serves: list[_e2e.Serve]
) -> None:
    slide = make_slide(43, 2048, 2048, True)
    study_uid = generate_uid()
    paths = write_dicom_wsi(slide, tmp_path / "scan", extras=False, mosaic=MOSAIC, study_uid=study_uid,
                            series_uid=generate_uid(), patient_id="SYNTH-RESUME")
    config = tmp_path / "appliance.toml"
    node_port = _e2e.write_config(config, appliance_dir, orthanc, [SM_ROUTE], lease_seconds=300)
    first = _start(serves, config, node_port)
    storescu(paths, node_port, "-R", "-xy")  # JPEG baseline, as the files are

    def at_60_percent() -> dict[str, Any] | None:
        job = _job(appliance_dir, study_uid)
        ok = job and job["state"] == "running" and job["progress_total"] and \
            job["progress_done"] >= 0.6 * job["progress_total"]
        return job if ok else None

    job = _e2e.wait_for(at_60_percent, 300, "the slide job at 60 %", first.tail, interval=0.05)
    first.kill9()
    killed = _job(appliance_dir, study_uid)
    assert killed is not None and killed["state"] == "running", f"not killed mid-job: {killed}"
    total = int(killed["progress_total"])
    assert killed["progress_done"] < total, "killed before the last tile"
    assert not orthanc.find_sr(study_uid)

    second = _start(serves, config, node_port)
    _e2e.wait_for(lambda: orthanc.find_sr(study_uid), 300, "the SR in Orthanc", second.tail)
    log = second.tail(200_000)
    resumed = re.search(rf"job {job['id']}: resuming from tile (\d+) of (\d+)", log)
    assert resumed, log[-4000:]
    start = int(resumed.group(1))
    assert int(resumed.group(2)) == total
    assert total - start < 0.5 * total, f"re-encoded {total - start} of {total} tiles"
    objects = _stored(orthanc, study_uid)
    assert second.terminate(timeout=30) == 0, second.tail()

    # The same slide, uninterrupted, in this process with the same engines and settings.
    from appliance.config import load_config
    from appliance.pathology.job import job_settings
    from appliance.pathology.pipeline import run_dicom_series
    from engines.registry import Registry

    cfg = load_config(config)
    registry = Registry(appliance_dir / "engines", cfg.trusted_keys_dir)
    tile, slide_engine = registry.load_active("pathology_tile"), registry.load_active("pathology_slide")
    settings = job_settings(cfg, tmp_path / "reference", "reference")
    reference = run_dicom_series(paths, tile, slide_engine, job_id="reference", settings=settings).findings[0]
    assert reference.tiles_scored == total
    assert _probability(objects["1.2.840.10008.5.1.4.1.1.88.34"]) == pytest.approx(reference.probability, abs=1e-6)
    from appliance.findings import StudyResult
    from appliance.reports.build import build_datasets
    from appliance.reports.sr import DeviceInfo

    rebuilt = build_datasets(StudyResult("reference", study_uid, (reference,)), DeviceInfo.from_serial("ref"))
    ref_seg = next(ds for ds in rebuilt if str(ds.SOPClassUID) == SEG_CLASS)
    seg = objects[SEG_CLASS]
    assert (int(seg.NumberOfFrames), int(seg.TotalPixelMatrixRows)) == (int(ref_seg.NumberOfFrames),
                                                                     int(ref_seg.TotalPixelMatrixRows))
    assert seg.PixelData == ref_seg.PixelData, "the heat map differs from an uninterrupted run's"
