"""From the assembled study to the model's ``dce`` input, as the ``breast_mri`` model card says.

1. resample every phase to the card's ``spacing_mm`` (z, y, x) with trilinear
   interpolation, keeping the field of view's centre (skipped, exactly, when
   the spacing already matches);
2. normalize relative to the pre-contrast phase: ``S / S0_mean - 1`` inside
   the breast mask, 0 outside, where the mask is the pre-contrast voxels at
   least 25 % of its 99th-percentile signal and ``S0_mean`` the mean
   pre-contrast signal inside it (one number per study; the training code,
   ``export.synthetic.dce.relative_signal``, computes the same);
3. crop or pad to the card's ``grid``, centred on the breast mask's bounding
   box (``crop = "breast"``, the default) or on the volume (``crop = "center"``);
   padding is 0 (no enhancement).
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from appliance.errors import JobFailed, StudyIncomplete
from appliance.mri._assembly import Dce4D
from engines.cards import BreastMriCard

MASK_FRACTION = 0.25  #: of the pre-contrast 99th percentile


@dataclass(frozen=True)
class ModelGeometry:
    """What the model card says about the ``dce`` input."""

    phase_count: int
    grid: tuple[int, int, int]  #: (z, y, x)
    spacing_mm: tuple[float, float, float]  #: (z, y, x)
    crop: str = "breast"

    @classmethod
    def from_card(cls, card: BreastMriCard) -> ModelGeometry:
        """``phase_count``, ``grid``, ``spacing_mm`` and ``crop`` of the (install-checked) card."""
        (z, y, x), (dz, dy, dx) = card.grid, card.spacing_mm
        return cls(card.phase_count, (z, y, x), (dz, dy, dx), card.crop)


@dataclass(frozen=True)
class Prepared:
    """The model's ``dce`` input for one study and the mask it was normalized in (same grid)."""

    dce: np.ndarray  #: float32 [phases, z, y, x]
    mask: np.ndarray  #: bool [z, y, x]
    s0_mean: float


def _resample_axis(data: np.ndarray, axis: int, n_out: int, step: float) -> np.ndarray:
    """Linear interpolation along one axis; output voxel i sits at input index (i + 0.5) * step - 0.5."""
    n_in = data.shape[axis]
    coords = np.clip((np.arange(n_out) + 0.5) * step - 0.5, 0, n_in - 1)
    lo = np.floor(coords).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (coords - lo).reshape([-1 if a == axis else 1 for a in range(data.ndim)])
    return np.take(data, lo, axis=axis) * (1 - w) + np.take(data, hi, axis=axis) * w


def resample(array: np.ndarray, spacing_in: tuple[float, ...], spacing_out: tuple[float, ...]) -> np.ndarray:
    """Trilinear resampling of (phase, z, y, x) from ``spacing_in`` to ``spacing_out`` (mm, z y x)."""
    out = array.astype(np.float64)
    for axis, (s_in, s_out) in enumerate(zip(spacing_in, spacing_out), start=1):
        if abs(s_in - s_out) <= 1e-6 * s_out:
            continue
        n_out = max(1, int(round(array.shape[axis] * s_in / s_out)))
        out = _resample_axis(out, axis, n_out, s_out / s_in)
    return out.astype(np.float32)


def breast_mask(pre: np.ndarray) -> np.ndarray:
    """Pre-contrast voxels at least :data:`MASK_FRACTION` of the 99th-percentile signal."""
    return np.asarray(pre >= MASK_FRACTION * float(np.percentile(pre, 99)))


def normalize(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``S / S0_mean - 1`` inside the breast mask, 0 outside; returns (values, mask, S0_mean)."""
    mask = breast_mask(array[0])
    if not mask.any():
        raise StudyIncomplete("the pre-contrast phase has no signal above background; cannot normalize")
    s0 = float(array[0][mask].mean())
    if s0 <= 0:
        raise StudyIncomplete(f"mean pre-contrast signal in the breast mask is {s0}; cannot normalize")
    out = np.where(mask[np.newaxis], array.astype(np.float64) / s0 - 1.0, 0.0)
    return out.astype(np.float32), mask, s0


def _window(n: int, g: int, centre: int) -> int:
    if n <= g:
        return (n - g) // 2  # negative: pad on both sides
    return min(max(centre - g // 2, 0), n - g)


def crop_or_pad(array: np.ndarray, mask: np.ndarray, grid: tuple[int, int, int], crop: str = "breast"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Cut (phase, z, y, x) to ``grid`` around the mask's bounding box centre (or the volume centre); pad with 0."""
    if crop == "breast" and mask.any():
        idx = np.argwhere(mask)
        centres = ((idx.min(axis=0) + idx.max(axis=0) + 1) // 2).tolist()
    else:
        centres = [n // 2 for n in mask.shape]
    starts = [_window(n, g, c) for n, g, c in zip(mask.shape, grid, centres)]
    out = np.zeros((array.shape[0], *grid), dtype=np.float32)
    out_mask = np.zeros(grid, dtype=bool)
    src, dst = [], []
    for n, g, s in zip(mask.shape, grid, starts):
        a, b = max(s, 0), min(s + g, n)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    out_mask[tuple(dst)] = mask[tuple(src)]
    return out, out_mask


def preprocess(study: Dce4D, geometry: ModelGeometry) -> Prepared:
    """Resample, normalize, crop or pad: the model's ``dce`` input for one study (without the batch axis)."""
    if study.array.shape[0] != geometry.phase_count:
        raise JobFailed(f"study has {study.array.shape[0]} phases, the model needs {geometry.phase_count}")
    resampled = resample(study.array, study.spacing_mm, geometry.spacing_mm)
    values, mask, s0 = normalize(resampled)
    dce, cropped_mask = crop_or_pad(values, mask, geometry.grid, geometry.crop)
    return Prepared(dce=dce, mask=cropped_mask, s0_mean=s0)
