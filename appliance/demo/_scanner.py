"""The demo's scanners: write a synthetic slide and a synthetic DCE study, send them over DICOM.

The studies are synthetic (``export.synthetic``, no real person) and get fresh
UIDs on every run, so a second demo against the same data directory makes new
jobs instead of finding the old ones done.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from appliance.errors import ApplianceError

__all__ = ["SCANNER_AE_TITLE", "DemoStudy", "send_study", "write_dce_study", "write_slide_study"]

logger = logging.getLogger(__name__)

SCANNER_AE_TITLE = "DEMO-SCANNER"
#: level-0 size of the demo slide (0.5 um/px): small, so the demo runs in a minute or two on 2 cores
SLIDE_PX = 1536


@dataclass
class DemoStudy:
    """One synthetic study on disk, ready to send; ``last_sent_at`` is set once the last file was stored."""

    pipeline: str
    modality: str
    study_uid: str
    paths: list[Path]
    last_sent_at: float = 0.0


def write_slide_study(out_dir: Path, seed: int = 7, size: int = SLIDE_PX) -> DemoStudy:
    """A synthetic H&E slide with tumour, as a DICOM WSI pyramid (JPEG frames, PS3.3 A.32.8)."""
    from export.synthetic.slide import make_slide, write_dicom_wsi

    study_uid = generate_uid()
    slide = make_slide(seed, size, size, tumour=True)
    paths = write_dicom_wsi(slide, out_dir, study_uid=study_uid, series_uid=generate_uid(), extras=False,
                            patient_id="SYNTH-DEMO-SLIDE")
    return DemoStudy("pathology", "SM", study_uid, list(paths))


def write_dce_study(out_dir: Path, seed: int = 11) -> DemoStudy:
    """A synthetic breast DCE-MRI study (one series, 5 phases), fresh UIDs."""
    from export.synthetic.dce import make_case
    from export.synthetic.dce_dicom import study_identity, write_case

    case = make_case(np.random.default_rng(seed), positive=True)
    key = f"demo-dce-{uuid.uuid4()}"
    identity = dataclasses.replace(
        study_identity(seed),
        study_uid=generate_uid(entropy_srcs=[key, "study"]),
        frame_of_reference_uid=generate_uid(entropy_srcs=[key, "frame-of-reference"]),
        uid_seed=key,
    )
    paths = write_case(case, out_dir, "single_series", identity)
    return DemoStudy("breast_mri", "MR", identity.study_uid, paths)


def send_study(study: DemoStudy, host: str, port: int, called_ae: str, timeout: float = 60.0) -> None:
    """C-STORE every file of ``study`` as the scanner would; raise ApplianceError naming any failure."""
    from dicom_node.scu import Destination, StorageSCU

    scu = StorageSCU(ae_title=SCANNER_AE_TITLE, timeout=timeout)
    results = scu.send_files(Destination("appliance", called_ae, host, port), study.paths)
    failed = [r for r in results if not r.ok]
    if failed:
        raise ApplianceError(
            f"the demo scanner could not send {len(failed)} of {len(results)} {study.modality} instance(s): "
            f"{failed[0].error}"
        )
    study.last_sent_at = time.time()
    logger.info("sent %d %s instance(s)", len(results), study.modality)
