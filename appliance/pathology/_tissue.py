"""Tissue detection on a low-resolution level.

Half of Otsu's threshold on saturation (tissue is stained, glass is white or grey),
gated by optical density so dark debris and pale glass both drop out, then a
morphological opening and removal of connected pieces smaller than
``min_area`` pixels (dust, pen specks). NumPy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["otsu_threshold", "tissue_mask", "remove_small_objects"]

_MIN_SATURATION = 0.07  # below this even Otsu's split is glass noise
_MIN_OD = 0.05  # mean optical density of faint tissue


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    w0 = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    mt = mu[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - mu) ** 2 / (w0 * w1)
    between = np.nan_to_num(between)
    return float(edges[int(np.argmax(between)) + 1])


def _shift_min(lab: np.ndarray) -> np.ndarray:
    out = lab.copy()
    np.minimum(out[1:], lab[:-1], out=out[1:])
    np.minimum(out[:-1], lab[1:], out=out[:-1])
    np.minimum(out[:, 1:], lab[:, :-1], out=out[:, 1:])
    np.minimum(out[:, :-1], lab[:, 1:], out=out[:, :-1])
    return out


def remove_small_objects(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 4-connected components of ``mask`` smaller than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask.copy()
    big = mask.size
    dtype = np.int32 if big < 2**31 - 1 else np.int64  # half the memory of int64 labels
    lab = np.where(mask, np.arange(big, dtype=dtype).reshape(mask.shape), dtype(big))
    while True:  # min-label propagation with pointer jumping
        new = np.where(mask, _shift_min(lab), dtype(big))
        inside = new < big
        for _ in range(4):
            new[inside] = new.flat[new[inside]]
        if np.array_equal(new, lab):
            break
        lab = new
    labels, counts = np.unique(lab[mask], return_counts=True)
    keep = np.isin(lab, labels[counts >= min_area]) & mask
    return keep


def _open(mask: np.ndarray) -> np.ndarray:
    """Binary opening with a 3x3 cross: erosion then dilation."""
    er = mask.copy()
    er[1:] &= mask[:-1]
    er[:-1] &= mask[1:]
    er[:, 1:] &= mask[:, :-1]
    er[:, :-1] &= mask[:, 1:]
    di = er.copy()
    di[1:] |= er[:-1]
    di[:-1] |= er[1:]
    di[:, 1:] |= er[:, :-1]
    di[:, :-1] |= er[:, 1:]
    return di


def _blur(a: np.ndarray) -> np.ndarray:
    """3x3 box blur with edge replication: steadies thresholds against codec noise."""
    p = np.pad(a.astype(np.float32, copy=False), 1, mode="edge")
    out = np.zeros(a.shape, np.float32)
    for i in range(3):
        for j in range(3):
            out += p[i : i + a.shape[0], j : j + a.shape[1]]
    out /= 9.0
    return out


def tissue_mask(rgb: np.ndarray, min_area: int = 16) -> np.ndarray:
    """Boolean tissue mask of a low-resolution RGB uint8 image."""
    mx, mn = rgb.max(axis=2).astype(np.float32), rgb.min(axis=2).astype(np.float32)
    sat = _blur(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), np.float32(0.0)))
    del mn
    od = np.zeros(rgb.shape[:2], np.float32)  # channel by channel: a few image-sized float32 arrays at most
    for c in range(3):
        channel = rgb[..., c].astype(np.float32)
        channel += 1.0
        channel /= 256.0
        np.clip(channel, 1e-3, 1.0, out=channel)
        od -= np.log10(channel, out=channel)
    od = _blur(od / 3.0)
    # Half of Otsu's split: pale tissue (lumen, loose stroma) stays tissue, and the
    # threshold sits in the steep glass-to-tissue edge where codec noise matters least.
    t = max(0.5 * otsu_threshold(sat), _MIN_SATURATION)
    mask = (sat > t) & (od > _MIN_OD)
    return remove_small_objects(_open(mask), min_area)
