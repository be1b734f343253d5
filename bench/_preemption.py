"""``bench/latency.py --preemption``: an urgent DCE study during a routine slide, preemption off and on.

Both runs use one CPU slot, the demo engines and a local Orthanc, each in a
fresh data directory (same engines, same slide files), so the slide job is the
same job with the same result; only ``[worker] preemption`` differs. A first DCE
study warms the MRI engine up; the measured one is sent once the slide job has
done ``slide_at`` of its tiles.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid
from rich.console import Console

from appliance.config import Config
from appliance.demo._pacs import LocalPacs, free_port, start_pacs
from appliance.demo._scanner import DemoStudy, send_study, write_dce_study
from appliance.demo.run import DEMO_NOTICE, demo_config, ensure_engines, wait_for_results
from appliance.service import Service
from engines.cards import PathologyTileCard

__all__ = ["run_preemption"]

GOAL_MARGIN_S = 10.0
TISSUE_SHARE = 0.45  # share of a make_slide(blobs=12) covered by kept tiles (bench/slide.py)
SLIDE_MPP = 0.5


@dataclass
class Outcome:
    alone_latency: float
    mri_latency: float
    mri_job: float
    slide_total: float
    slide_latency: float
    probability: float
    tiles: int
    preemptions: int
    batch_seconds: float


def _config(data_dir: Path, pacs: LocalPacs, stable: float, preemption: bool) -> Config:
    base = demo_config(data_dir, free_port(), pacs, stable)
    routes = tuple(r.model_copy(update={"priority": 0 if r.pipeline == "breast_mri" else 5}) for r in base.routes)
    worker = base.worker.model_copy(update={"devices": ("cpu",), "preemption": preemption})
    return base.model_copy(update={"routes": routes, "worker": worker})


@contextmanager
def _appliance(data_dir: Path, stable: float, preemption: bool) -> Iterator[tuple[Service, LocalPacs]]:
    pacs = start_pacs(data_dir / "pacs")
    service: Service | None = None
    try:
        service = Service(_config(data_dir, pacs, stable, preemption))
        service.start()
        yield service, pacs
    finally:
        if service is not None:
            service.stop()
        pacs.stop()


def _write_slide(out: Path, tiles: int, tile_px_level0: float) -> DemoStudy:
    from export.synthetic.slide import make_slide, write_dicom_wsi

    side = max(512, int(math.sqrt(tiles / TISSUE_SHARE) * tile_px_level0) // 256 * 256)
    t0 = time.perf_counter()
    study_uid = generate_uid()
    slide = make_slide(21, side, side, True, blobs=12, mpp=SLIDE_MPP)
    paths = write_dicom_wsi(slide, out, study_uid=study_uid, series_uid=generate_uid(), extras=False,
                            patient_id="SYNTH-BENCH-SLIDE")
    print(f"slide {side}x{side} px at {SLIDE_MPP} um/px written in {time.perf_counter() - t0:.0f} s", flush=True)
    return DemoStudy("pathology", "SM", study_uid, list(paths))


def _slide_job(service: Service, study_uid: str) -> dict[str, float] | None:
    rows = service.store.query(
        "select id, state, progress_done, progress_total, started_at, finished_at, preemptions, result"
        " from jobs where study_uid = ? and pipeline = 'pathology'", (study_uid,))
    return rows[0] if rows else None


def _one_run(run_dir: Path, engines_from: Path, slide: DemoStudy, stable: float, preemption: bool,
             slide_at: float) -> Outcome:
    import json

    for name in ("engines", "trusted_keys"):
        shutil.copytree(engines_from / name, run_dir / name)
    warm, alone, dce = (write_dce_study(run_dir / name, seed=100 + i) for i, name in enumerate(("warm", "alone", "dce")))
    with _appliance(run_dir, stable, preemption) as (service, pacs):
        cfg = service.config
        baseline = 0.0
        for study in (warm, alone):  # the first loads the MRI engine; the second is the warm baseline, alone
            send_study(study, cfg.node.host, cfg.node.port, cfg.node.ae_title)
            rows, problem = wait_for_results(service, pacs, [study], timeout=3600)
            if problem:
                raise RuntimeError(f"MRI study without a slide: {problem}")
            baseline = float(rows[0].latency_s or 0.0)
        send_study(slide, cfg.node.host, cfg.node.port, cfg.node.ae_title)
        first_start = 0.0
        deadline = time.monotonic() + 3600
        while True:
            job = _slide_job(service, slide.study_uid)
            if job is not None and job["state"] == "running" and not first_start:
                first_start = float(job["started_at"])
            if job is not None and job["progress_total"] and job["progress_done"] >= slide_at * job["progress_total"]:
                break
            if job is not None and job["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
                raise RuntimeError(f"the slide job ended before {slide_at:.0%} of it was done: {job}")
            time.sleep(0.1)
        send_study(dce, cfg.node.host, cfg.node.port, cfg.node.ae_title)
        rows, problem = wait_for_results(service, pacs, [dce], timeout=3600)
        if problem:
            raise RuntimeError(problem)
        mri = service.store.query("select started_at, finished_at from jobs where id = ?", (rows[0].job_id,))[0]
        slide_rows, problem = wait_for_results(service, pacs, [slide], timeout=3600)
        if problem:
            raise RuntimeError(problem)
        job = _slide_job(service, slide.study_uid)
        assert job is not None
        result = json.loads(job["result"])
        finding = result["findings"][0]
        pipeline_s = float(result["seconds"]["pipeline"])
        batches = max(1, math.ceil(int(finding["tiles_scored"]) / cfg.worker.batch_size))
        return Outcome(
            alone_latency=baseline,
            mri_latency=float(rows[0].latency_s or 0.0),
            mri_job=float(mri["finished_at"]) - float(mri["started_at"]),
            slide_total=float(job["finished_at"]) - first_start,
            slide_latency=float(slide_rows[0].latency_s or 0.0),
            probability=float(finding["probability"]),
            tiles=int(finding["tiles_scored"]),
            preemptions=int(job["preemptions"] or 0),
            batch_seconds=pipeline_s / batches,
        )


def run_preemption(data_dir: Path, tiles: int, stable: float, slide_at: float) -> int:
    """Both runs, then the figures and the goals; 0 when both runs completed."""
    from engines.registry import Registry

    console = Console()
    ensure_engines(data_dir, data_dir / "trusted_keys", console)
    manifest = Registry(data_dir / "engines", data_dir / "trusted_keys").active_manifest("pathology_tile")
    if manifest is None:
        print("no active pathology_tile engine", file=sys.stderr)
        return 1
    card = manifest.card
    if not (isinstance(card, PathologyTileCard) and card.tile_size and card.mpp):
        print("the active pathology_tile card states no tile_size and mpp", file=sys.stderr)
        return 1
    tile_px = card.tile_size * card.mpp / SLIDE_MPP
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        root = Path(tmp)
        slide = _write_slide(root / "slide", tiles, tile_px)
        runs: dict[bool, Outcome] = {}
        for preemption in (False, True):
            runs[preemption] = _one_run(root / f"preemption-{'on' if preemption else 'off'}", data_dir, slide,
                                        stable, preemption, slide_at)
            o = runs[preemption]
            print(f"preemption {'on ' if preemption else 'off'}: MRI alone {o.alone_latency:.2f} s, during the slide "
                  f"{o.mri_latency:.2f} s (job {o.mri_job:.2f} s)"
                  f" | slide {o.tiles} tiles, total {o.slide_total:.1f} s, last instance -> SR {o.slide_latency:.1f} s,"
                  f" probability {o.probability:.6f}, preempted {o.preemptions}x, batch {o.batch_seconds:.3f} s",
                  flush=True)
    off, on = runs[False], runs[True]
    bound = stable + GOAL_MARGIN_S + on.batch_seconds
    extra = on.slide_total - off.slide_total
    allowed = on.mri_job + 0.05 * off.slide_total
    print(f"\none CPU slot, {DEMO_NOTICE}, slide of {on.tiles} tiles, MRI sent at {slide_at:.0%} of the slide")
    print(f"MRI latency: alone {on.alone_latency:.2f} s (baseline, same run); during the slide: off "
          f"{off.mri_latency:.2f} s ({off.mri_latency / on.alone_latency:.2f}x), on {on.mri_latency:.2f} s "
          f"({on.mri_latency / on.alone_latency:.2f}x)")
    print(f"goal on <= stable {stable:.1f} + "
          f"{GOAL_MARGIN_S:.0f} + one batch {on.batch_seconds:.2f} = {bound:.2f} s: "
          f"{'met' if on.mri_latency <= bound else 'NOT met'}")
    same = on.probability == off.probability and on.tiles == off.tiles
    print(f"slide result identical (probability, tiles): {'yes' if same else 'NO'}")
    print(f"slide total: off {off.slide_total:.1f} s, on {on.slide_total:.1f} s, extra {extra:.1f} s; goal <= MRI job "
          f"{on.mri_job:.1f} s + 5 % of the slide ({0.05 * off.slide_total:.1f} s) = {allowed:.1f} s: "
          f"{'met' if extra <= allowed else 'NOT met'}")
    return 0
