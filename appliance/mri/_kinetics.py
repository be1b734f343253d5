"""Kinetic curve type of the most enhancing lesion (BI-RADS MRI lexicon, delayed phase).

The lesion is the connected region (6-neighbourhood) of voxels around the voxel
with the highest early enhancement, keeping voxels whose early enhancement is
at least half of that maximum and at least :data:`MIN_EARLY_ENHANCEMENT`
(30 %; clinical CAD often uses 50 %, synthetic persistent lesions start lower). Its mean time-intensity
curve is classified: the change from the early peak (the larger of the first
two post-contrast phases) to the last phase, relative to the peak signal,
above +10 % is ``persistent``, below -10 % ``washout``, else ``plateau``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from appliance.findings import KineticCurve

MIN_EARLY_ENHANCEMENT = 0.3
CURVE_THRESHOLD = 0.10
_MIN_PRE = 0.2  #: of the mask's mean pre-contrast signal: darker voxels give no reliable ratio


@dataclass(frozen=True)
class Kinetics:
    """The lesion's curve and how it was found."""

    curve: KineticCurve
    enhancement: tuple[float, ...]  #: mean relative enhancement S/S_pre - 1 per phase
    voxels: int


def classify(enhancement: np.ndarray) -> KineticCurve:
    """BI-RADS delayed-phase type from relative enhancement per phase (0 at the pre phase)."""
    peak = float(max(enhancement[1], enhancement[2]))
    change = (float(enhancement[-1]) - peak) / (1.0 + peak)
    if change > CURVE_THRESHOLD:
        return "persistent"
    if change < -CURVE_THRESHOLD:
        return "washout"
    return "plateau"


def _region(candidates: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
    region = np.zeros_like(candidates)
    region[seed] = True
    queue = deque([seed])
    shape = candidates.shape
    while queue:
        z, y, x = queue.popleft()
        for dz, dy, dx in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            n = (z + dz, y + dy, x + dx)
            if all(0 <= n[i] < shape[i] for i in range(3)) and candidates[n] and not region[n]:
                region[n] = True
                queue.append(n)
    return region


def lesion_kinetics(dce: np.ndarray, mask: np.ndarray) -> Kinetics | None:
    """Kinetics of the most enhancing region of normalized ``dce`` [phases, z, y, x]; None if nothing enhances.

    ``dce`` is ``S / S0_mean - 1`` (see :mod:`appliance.mri._preprocess`), so a
    voxel's own enhancement is ``(dce[t] + 1) / (dce[0] + 1) - 1``.
    """
    if dce.shape[0] < 3:
        return None
    signal = dce.astype(np.float64) + 1.0
    usable = mask & (signal[0] > _MIN_PRE)
    if not usable.any():
        return None
    rel = np.where(usable[np.newaxis], signal / np.where(usable, signal[0], 1.0) - 1.0, 0.0)
    early = np.maximum(rel[1], rel[2])
    seed = tuple(int(i) for i in np.unravel_index(int(np.argmax(early)), early.shape))
    top = float(early[seed])
    if top < MIN_EARLY_ENHANCEMENT:
        return None
    region = _region(usable & (early >= max(MIN_EARLY_ENHANCEMENT, 0.5 * top)), seed)
    curve = signal[:, region].mean(axis=1)
    enhancement = curve / curve[0] - 1.0
    return Kinetics(classify(enhancement), tuple(float(v) for v in enhancement), int(region.sum()))
