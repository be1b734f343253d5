"""Optional Secondary Capture with the finding burned in, for viewers that show neither SR nor SEG.

PS3.3 A.8.1 (SC Image IOD): Image Type DERIVED\\SECONDARY, Burned In
Annotation YES, Conversion Type WSD (workstation), and a Derivation
Description saying what was drawn. Breast MRI: the key slice of the source
series with a banner; pathology: the tile heat map (the slide's own pixels are
never read whole, DESIGN invariant 6) with a banner.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from appliance.errors import ReportError
from appliance.findings import Finding, StudyResult
from appliance.reports import uids
from appliance.reports._source import with_plane_geometry, with_type2
from appliance.reports.heatmap import bounded_grid
from appliance.reports.sr import VOCABULARY, DeviceInfo, engine_equipment, result_version

logger = logging.getLogger(__name__)

SC_SERIES_NUMBER = 9903
MIN_SIDE = 512  #: captures are scaled up so the burned-in text is legible
MAX_SIDE = 2048  #: ... but never beyond this on their long side
BANNER_PX = 64


def _window(pixels: np.ndarray) -> np.ndarray:
    """Grayscale to uint8 with a 1-99 percentile window."""
    values = pixels.astype(np.float32)
    lo, hi = np.percentile(values, (1, 99)) if values.size else (0.0, 1.0)
    scale = 255.0 / max(float(hi - lo), 1e-6)
    return np.clip((values - lo) * scale, 0, 255).astype(np.uint8)


def _heat_rgb(scores: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] to RGB (blue -> red); NaN (no tissue) grey."""
    s = np.nan_to_num(scores.astype(np.float32), nan=-1.0)
    rgb = np.empty((*s.shape, 3), dtype=np.uint8)
    rgb[..., 0] = np.clip(s * 255, 0, 255)
    rgb[..., 1] = np.clip((1 - np.abs(2 * s - 1)) * 160, 0, 255)
    rgb[..., 2] = np.clip((1 - s) * 255, 0, 255)
    rgb[s < 0] = 200
    return rgb


def _scaled(rgb: np.ndarray) -> Image.Image:
    image = Image.fromarray(rgb, mode="RGB")
    factor = max(1, min(-(-MIN_SIDE // max(1, min(image.size))), MAX_SIDE // max(1, max(image.size))))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _burn(image: Image.Image, lines: Sequence[str]) -> np.ndarray:
    """Add a black banner above ``image`` with ``lines`` of white text."""
    canvas = Image.new("RGB", (max(image.width, MIN_SIDE), image.height + BANNER_PX), (0, 0, 0))
    canvas.paste(image, (0, BANNER_PX))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for row, text in enumerate(lines):
        draw.text((6, 4 + 15 * row), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _lines(finding: Finding) -> list[str]:
    vocab = VOCABULARY[finding.pipeline]
    verdict = "POSITIVE" if finding.positive else "negative"
    first = "AI RESULT - UNVERIFIED" + (" - DEMO, NOT FOR CLINICAL USE" if finding.engine.demo else "")
    return [
        first,
        f"{vocab.title}: {verdict}",
        f"p={finding.probability:.3f} threshold={finding.threshold:.3f}",
        f"{finding.engine.name} {finding.engine.version}"[:80],
    ]


def _orientation(ds: Dataset) -> tuple[str, str]:
    """Patient Orientation (PS3.3 C.7.6.1.1.1) from Image Orientation (Patient)."""
    iop = ds.get("ImageOrientationPatient")
    if not iop or len(iop) != 6:
        raise ReportError("source has no Image Orientation (Patient) to derive Patient Orientation from")
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def name(vector: Sequence[float]) -> str:
        axes = sorted(range(3), key=lambda i: -abs(float(vector[i])))
        return "".join(letters[i][0 if float(vector[i]) > 0 else 1] for i in axes if abs(float(vector[i])) > 0.25)

    return name(iop[:3]), name(iop[3:])


def _key_slice(finding: Finding) -> Dataset:
    """The middle source instance of a finding (with pixels)."""
    middle = finding.sources[len(finding.sources) // 2]
    return pydicom.dcmread(middle.path)


def build_capture(
    result: StudyResult, index: int, finding: Finding, device: DeviceInfo, headers: dict[str, Dataset]
) -> hd.sc.SCImage:
    """The Secondary Capture of finding ``index`` (1-based)."""
    version = f"{result_version(result)}#{index}"
    common = dict(
        photometric_interpretation="RGB",
        bits_allocated=8,
        series_instance_uid=uids.series_instance_uid(result.job_id, result_version(result), "sc"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid(result.job_id, version, "sc"),
        instance_number=index,
        **device.equipment(),
        series_description="AI result capture (unverified)",
        contributing_equipment=[engine_equipment(finding.engine, device)],
    )
    try:
        if finding.heat_map is not None:
            level = headers[finding.heat_map.level_source.sop_instance_uid]
            pixels = _burn(_scaled(_heat_rgb(bounded_grid(finding.heat_map.scores, MAX_SIDE)[0])), _lines(finding))
            specimens = [hd.SpecimenDescription.from_dataset(s) for s in level.get("SpecimenDescriptionSequence", [])]
            sc = hd.sc.SCImage.from_ref_dataset(
                with_type2(level),
                pixel_array=pixels,
                coordinate_system="SLIDE",
                container_identifier=str(level.get("ContainerIdentifier", "") or "UNKNOWN"),
                specimen_descriptions=specimens,
                **common,  # type: ignore[arg-type]
            )
            description = "Tile heat map of the slide with the AI finding burned in"
        else:
            ds = _key_slice(finding)
            gray = _window(ds.pixel_array if ds.get("NumberOfFrames", 1) in (1, None) else ds.pixel_array[0])
            pixels = _burn(_scaled(np.stack([gray] * 3, axis=-1)), _lines(finding))
            sc = hd.sc.SCImage.from_ref_dataset(
                with_type2(ds),
                pixel_array=pixels,
                coordinate_system="PATIENT",
                patient_orientation=_orientation(with_plane_geometry(ds)),
                laterality=ds.get("Laterality") or None,
                **common,  # type: ignore[arg-type]
            )
            description = "Key slice with the AI finding burned in"
    except (ValueError, AttributeError, KeyError, TypeError, NotImplementedError, RuntimeError) as exc:
        raise ReportError(f"cannot build the capture of finding {index} of job {result.job_id}: {exc}") from exc
    # General Image / General Series Type 2C attributes: present, empty where unknown (PS3.3 C.7.6.1, C.7.3.1).
    if "PatientOrientation" not in sc:
        sc.PatientOrientation = []
    if finding.heat_map is None and "Laterality" not in sc:
        sc.Laterality = ""
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"  # PS3.3 C.8.6.1: made on a workstation, not digitized film or video
    sc.DerivationDescription = description
    return sc
