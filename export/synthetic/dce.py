"""Synthetic breast DCE-MRI cases: a pre-contrast and four post-contrast 3-D volumes (or any other timing).

One axial slab through one breast (anterior at the top rows, chest wall and
pectoral muscle at the bottom), T1-weighted without fat suppression: fat is
bright, fibroglandular tissue darker and textured, air is Rician noise. One
enhancing lesion sits in the breast; its time-intensity curve is
``persistent`` (still rising at the last phase), ``plateau`` (flat after the
early peak, within 10 %) or ``washout`` (falling more than 10 % after the
early peak), the BI-RADS kinetic types. Washout correlates with the positive
label (node metastasis), persistent with the negative one; clinical variables
correlate too (grade, Ki-67, HER2). Contrast is injected :data:`INJECTION_S`
after the pre-contrast phase starts, so the nominal post-contrast phases lie
at :data:`POST_CONTRAST_TIMES_S` after injection (what the model card states);
``make_case(..., phase_times_s=...)`` samples the same kinetics at another
protocol's times (linear in time between the nominal phases, the last
segment's slope after the last one), as a scanner with another protocol would. Everything comes from the ``rng`` passed in,
so a seed gives the same case on every machine. About 50 ms a case.

The model input is :func:`relative_signal` of the volume (the ``breast_mri``
model card's normalization; ``appliance/mri/_preprocess.py`` computes the same).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "CURVE_TYPES",
    "GRID",
    "PHASE_NAMES",
    "PHASE_TIMES_S",
    "POST_CONTRAST_TIMES_S",
    "INJECTION_S",
    "SPACING_MM",
    "DceCase",
    "classify_curve",
    "enhancement_at",
    "make_case",
    "relative_signal",
]

CurveType = Literal["persistent", "plateau", "washout"]
CURVE_TYPES: tuple[CurveType, ...] = ("persistent", "plateau", "washout")

GRID: tuple[int, int, int] = (16, 64, 64)  #: (z, y, x) voxels of every phase
SPACING_MM: tuple[float, float, float] = (3.0, 1.5, 1.5)  #: (z, y, x) voxel spacing in mm (DceConfig.spacing_mm)
PHASE_NAMES: tuple[str, ...] = ("pre", "post1", "post2", "post3", "post4")
PHASE_TIMES_S: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0, 360.0)  #: acquisition start after the pre phase
INJECTION_S = 60.0  #: contrast injection, seconds after the pre phase starts
#: the nominal post-contrast phases, seconds after injection (the model card's ``post_contrast_times_s``)
POST_CONTRAST_TIMES_S: tuple[float, ...] = tuple(t - INJECTION_S for t in PHASE_TIMES_S[1:])

#: BI-RADS delayed-phase rule: change from the early peak above +10 % persistent, below -10 % washout
CURVE_THRESHOLD = 0.10

_CURVE_PROBS = {
    True: (0.10, 0.20, 0.70),  # positive: mostly washout
    False: (0.65, 0.25, 0.10),  # negative: mostly persistent
}


@dataclass(frozen=True)
class DceCase:
    """One synthetic study: raw signal, clinical record, the lesion's kinetics and the label."""

    volume: np.ndarray  #: float32 [phases, 16, 64, 64] raw signal (phase, z, y, x), >= 0
    clinical: dict[str, float | None]  #: age (years), er, her2 (0/1), ki67 (%), grade (1-3); None = missing
    curve: CurveType  #: the lesion's kinetic curve type
    label: int  #: 1 = node metastasis (positive), 0 = negative
    lesion_mask: np.ndarray = field(repr=False)  #: bool [16, 64, 64]
    breast_mask: np.ndarray = field(repr=False)  #: bool [16, 64, 64]
    enhancement: tuple[float, ...] = ()  #: the lesion's relative enhancement at each nominal phase (0 at pre)
    phase_times_s: tuple[float, ...] = PHASE_TIMES_S  #: acquisition start of each phase after the pre phase


def classify_curve(enhancement: np.ndarray | tuple[float, ...] | list[float]) -> CurveType:
    """BI-RADS kinetic type from relative enhancement per phase (index 0 = pre, value 0).

    The early peak is the larger of the first two post-contrast phases; the
    delayed value is the last phase. ``(delayed - peak) / (1 + peak)`` is the
    signal change relative to the peak signal (S = S0 (1 + E)).
    """
    e = np.asarray(enhancement, dtype=np.float64)
    if e.shape[0] < 3:
        raise ValueError(f"need at least 3 phases (pre + 2 post) to classify a curve, got {e.shape[0]}")
    peak = float(max(e[1], e[2]))
    change = (float(e[-1]) - peak) / (1.0 + peak)
    if change > CURVE_THRESHOLD:
        return "persistent"
    if change < -CURVE_THRESHOLD:
        return "washout"
    return "plateau"


def breast_mask(pre: np.ndarray) -> np.ndarray:
    """Tissue mask of a pre-contrast volume: voxels at least 25 % of its 99th-percentile signal."""
    return np.asarray(pre >= 0.25 * float(np.percentile(pre, 99)))


def relative_signal(volume: np.ndarray) -> np.ndarray:
    """Model input from raw signal [5, z, y, x]: ``S / S0_mean - 1`` inside the mask, 0 outside.

    ``S0_mean`` is the mean pre-contrast (phase 0) signal inside :func:`breast_mask`
    of phase 0, one number per study. float32.
    """
    mask = breast_mask(volume[0])
    s0 = float(volume[0][mask].mean()) if mask.any() else 1.0
    out = np.where(mask[np.newaxis], volume.astype(np.float64) / s0 - 1.0, 0.0)
    return out.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]) -> np.ndarray:
    """Gaussian-filtered white noise (FFT), rescaled to zero mean and unit std."""
    white = rng.standard_normal(shape)
    spectrum = np.fft.rfftn(white)
    gain = np.ones(spectrum.shape)
    for axis, (n, s) in enumerate(zip(shape, sigma_vox)):
        freqs = np.fft.rfftfreq(n) if axis == len(shape) - 1 else np.fft.fftfreq(n)
        g = np.exp(-2.0 * (np.pi * freqs * s) ** 2)
        idx: list[Any] = [np.newaxis] * len(shape)
        idx[axis] = slice(None)
        gain = gain * g[tuple(idx)]
    smooth = np.fft.irfftn(spectrum * gain, s=shape, axes=tuple(range(len(shape))))
    return ((smooth - smooth.mean()) / (smooth.std() + 1e-12)).astype(np.float64)


def _enhancement_curve(rng: np.random.Generator, curve: CurveType) -> np.ndarray:
    """Relative enhancement (S/S0 - 1) of the lesion at the five phases."""
    amp = rng.uniform(0.9, 2.0)
    if curve == "persistent":
        # slow uptake, still rising at the last phase: delayed 20-45 % above the early peak signal
        e = np.array([0.0, 0.45, 0.62, 0.75, 0.86]) * amp
        target = rng.uniform(0.20, 0.45)
        peak = max(e[1], e[2])
        e[4] = (1 + peak) * (1 + target) - 1
        e[3] = 0.5 * (e[2] + e[4])
    elif curve == "plateau":
        e = np.array([0.0, 0.85, 1.0, 1.0, 1.0]) * amp
        peak = max(e[1], e[2])
        change = rng.uniform(-0.04, 0.04)
        e[3] = (1 + peak) * (1 + 0.5 * change) - 1
        e[4] = (1 + peak) * (1 + change) - 1
    else:
        e = np.array([0.0, 1.0, 0.95, 0.0, 0.0]) * amp * 1.2
        peak = max(e[1], e[2])
        target = rng.uniform(0.18, 0.35)
        e[4] = (1 + peak) * (1 - target) - 1
        e[3] = 0.5 * (e[2] + e[4])
    return e


def _clinical(rng: np.random.Generator, positive: bool, curve: CurveType) -> dict[str, float | None]:
    """Age, ER, HER2, Ki-67 and grade with label-dependent rates; each missing with p = 0.12."""
    age = float(np.clip(np.round(rng.normal(52.0 if positive else 57.0, 11.0)), 25, 90))
    grade = int(rng.choice([1, 2, 3], p=(0.10, 0.40, 0.50) if positive else (0.35, 0.45, 0.20)))
    er = float(rng.random() < (0.70 if grade < 3 else 0.55))
    her2 = float(rng.random() < (0.30 if positive else 0.12))
    ki67 = float(np.clip(np.round(rng.normal(10 + 12 * grade + (8 if curve == "washout" else 0), 8)), 1, 95))
    values: dict[str, float | None] = {"age": age, "er": er, "her2": her2, "ki67": ki67, "grade": float(grade)}
    for key in values:
        if rng.random() < 0.12:
            values[key] = None
    return values


def _anatomy(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Breast mask, fibroglandular fraction, muscle mask and pre-contrast signal (z, y, x)."""
    nz, ny, nx = GRID
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    wall = rng.uniform(46, 52)  # chest wall row (posterior, bottom of the image)
    depth = rng.uniform(34, 40)  # anterior extent of the breast from the chest wall
    half_width = rng.uniform(24, 29)
    cx = nx / 2 + rng.uniform(-3, 3)
    zc, half_z = (nz - 1) / 2, nz / 2 + rng.uniform(1.5, 4)
    r = ((x - cx) / half_width) ** 2 + ((wall - y) / depth) ** 2 + ((z - zc) / half_z) ** 2
    breast = (r <= 1.0) & (y <= wall)
    body = y > wall
    muscle = body & (y <= wall + rng.uniform(5, 8))
    texture = _smooth_noise(rng, GRID, (1.0, 2.2, 2.2))
    # glandular tissue concentrated centrally behind the nipple, fat towards skin and chest wall
    central = np.exp(-((x - cx) ** 2) / (2 * (0.55 * half_width) ** 2)) * np.clip((wall - y) / depth, 0, 1) ** 0.5
    density = rng.uniform(-0.6, 0.5)
    fgt = 1.0 / (1.0 + np.exp(-(2.5 * texture + 3.0 * central - 2.0 + 2.0 * density)))
    fgt = np.where(breast & (r < 0.85), fgt, 0.0)
    fat_signal, fgt_signal = rng.uniform(320, 380), rng.uniform(130, 170)
    s0 = np.zeros(GRID)
    s0[breast] = fat_signal
    s0 = s0 * (1 - fgt) + fgt_signal * fgt * breast
    skin = breast & (r > 0.93)
    s0[skin] = 0.6 * fat_signal
    s0[muscle] = rng.uniform(100, 130)
    s0[body & ~muscle] = rng.uniform(150, 200) * (1 + 0.15 * texture[body & ~muscle])
    return breast, fgt, muscle, s0


def _lesion(rng: np.random.Generator, breast: np.ndarray) -> np.ndarray:
    """An oval mass (slightly lobulated), centred well inside the breast mask and clipped to it.

    Radii 7-14 mm (y), 9-28 mm (x) and 8-13 mm (z) at :data:`SPACING_MM`: the
    size of node-positive invasive cancers, and large enough that the demo
    network learns the kinetics from 128 training studies on every seed.
    """
    nz, ny, nx = GRID
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    rxy = rng.uniform(4.8, 9.6)
    rz = rng.uniform(2.56, 4.48)
    inner = breast.copy()
    for _ in range(3):  # erode a few voxels in-plane so the lesion stays inside
        inner = inner & np.roll(inner, 3, axis=2) & np.roll(inner, -3, axis=2)
        inner = inner & np.roll(inner, 3, axis=1) & np.roll(inner, -3, axis=1)
    inner[:3] = False
    inner[-3:] = False
    candidates = np.argwhere(inner)
    if candidates.size == 0:  # cannot happen with the geometry above; keep a safe centre
        centre = np.array([nz // 2, ny // 2, nx // 2])
    else:
        centre = candidates[rng.integers(len(candidates))]
    lobes = 1.0 + 0.25 * _smooth_noise(rng, GRID, (1.0, 1.5, 1.5))
    d = ((z - centre[0]) / rz) ** 2 + ((y - centre[1]) / rxy) ** 2 + ((x - centre[2]) / (rxy * rng.uniform(1.28, 1.92))) ** 2
    mask: np.ndarray = (d <= lobes) & breast
    return mask


def enhancement_at(e_nominal: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """The lesion's enhancement at ``times_s`` after the pre phase: 0 until injection, linear between the
    nominal phases, the last segment's slope after the last one."""
    knots = np.asarray((0.0, INJECTION_S, *PHASE_TIMES_S[1:]))
    values = np.asarray((0.0, 0.0, *e_nominal[1:]))
    out = np.interp(times_s, knots, values)
    slope = (values[-1] - values[-2]) / (knots[-1] - knots[-2])
    late = times_s > knots[-1]
    out[late] = values[-1] + slope * (times_s[late] - knots[-1])
    return np.maximum(out, -0.5)


def _check_times(times: tuple[float, ...]) -> None:
    if len(times) < 2 or times[0] != 0.0 or any(b <= a for a, b in zip(times, times[1:])) or times[1] <= INJECTION_S:
        raise ValueError(f"phase_times_s {list(times)} must start with 0 (pre), increase, and put every "
                         f"post-contrast phase after the injection at {INJECTION_S:g} s")


def make_case(rng: np.random.Generator, positive: bool, phase_times_s: tuple[float, ...] = PHASE_TIMES_S) -> DceCase:
    """One synthetic DCE study; deterministic given ``rng``'s state (and the same for the nominal times
    as before ``phase_times_s`` existed)."""
    times = tuple(float(v) for v in phase_times_s)
    _check_times(times)
    curve: CurveType = CURVE_TYPES[int(rng.choice(3, p=_CURVE_PROBS[bool(positive)]))]
    breast, fgt, muscle, s0 = _anatomy(rng)
    lesion = _lesion(rng, breast)
    e_nominal = _enhancement_curve(rng, curve)
    e_lesion = e_nominal if times == PHASE_TIMES_S else enhancement_at(e_nominal, np.asarray(times))
    t = np.asarray(times) / 60.0
    bpe = rng.uniform(0.05, 0.25) * (1 - np.exp(-t / 4.0)) / (1 - np.exp(-6.0 / 4.0))  # slow, persistent
    e_muscle = 0.35 * (1 - np.exp(-t / 1.5))
    lesion_s0 = rng.uniform(140, 180)
    heterogeneity = 1.0 + 0.12 * _smooth_noise(rng, GRID, (0.8, 1.2, 1.2))
    bias = 1.0 + rng.uniform(0.05, 0.2) * np.linspace(1, -1, GRID[1])[None, :, None]  # coil falloff
    sigma = rng.uniform(4.0, 7.0)

    volume = np.empty((len(times), *GRID), dtype=np.float32)
    base = s0.copy()
    base[lesion] = lesion_s0
    # another protocol draws its noise from a copy, and the case's own generator skips the nominal
    # protocol's noise draws: the clinical record below is the same whatever the timing
    noise = rng if times == PHASE_TIMES_S else copy.deepcopy(rng)
    for p in range(len(times)):
        rel = fgt * bpe[p] + muscle * e_muscle[p]
        rel = np.where(lesion, e_lesion[p] * heterogeneity, rel)
        signal = base * (1 + rel) * bias
        n1 = noise.standard_normal(GRID) * sigma
        n2 = noise.standard_normal(GRID) * sigma
        volume[p] = np.sqrt((signal + n1) ** 2 + n2**2)  # Rician magnitude noise
    if noise is not rng:
        rng.standard_normal((2 * len(PHASE_TIMES_S), *GRID))
    return DceCase(
        volume=volume,
        clinical=_clinical(rng, bool(positive), curve),
        curve=curve,
        label=int(bool(positive)),
        lesion_mask=lesion,
        breast_mask=breast,
        enhancement=tuple(float(v) for v in e_nominal),
        phase_times_s=times,
    )
