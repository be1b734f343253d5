"""The tiling kernels: NumPy reference against a per-tile PIL loop, nvcc, CUDA."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.kernels import CU_SOURCE, resize_weights, tile_batch
from engines.kernels.reference import CHUNK_TILES
from export.synthetic.tissue import render_tile
from tests.engines._tiling import MEAN, RECT_SETS, STD, assert_matches_reference, make_region

NVCC = Path("/usr/local/bin/nvcc")
ARCHES = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")


@pytest.fixture(scope="module")
def region() -> np.ndarray:
    return make_region()


def per_tile_pil(region: np.ndarray, rects: list[tuple[int, int, int, int]], size: int) -> np.ndarray:
    """The plain implementation: crop, PIL BILINEAR resize, normalize, one tile at a time."""
    out = []
    for x, y, w, h in rects:
        im = Image.fromarray(region[y : y + h, x : x + w]).resize((size, size), Image.BILINEAR)
        a = (np.asarray(im, np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
        out.append(a.transpose(2, 0, 1))
    return np.stack(out)


@pytest.mark.parametrize("name", sorted(RECT_SETS))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_reference_matches_per_tile_pil(region: np.ndarray, name: str, dtype: type) -> None:
    rects = RECT_SETS[name]
    size = 112
    got = tile_batch(region, rects, size, MEAN, STD, dtype=dtype)
    want = per_tile_pil(region, rects, size)
    assert got.images.dtype == np.dtype(dtype)
    assert got.images.shape == (len(rects), 3, size, size)
    diff = np.abs(got.images.astype(np.float32) - want)
    # Pillow rounds to uint8 between its two passes: at most ~1.5 grey levels apart.
    assert diff.max() < 2.0 / 255.0 / min(STD) + 0.01
    assert diff.mean() < 0.01


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_reference_in_chunks_and_into_out_equals_one_tile_at_a_time(region: np.ndarray, dtype: type) -> None:
    """Many tiles of mixed sizes (more than a chunk each) give what each tile gives alone."""
    rects = [(x, y, 112, 112) for y in range(0, 368, 61) for x in range(0, 368, 97)]  # identity, 2+ chunks
    rects += [(x, 7, 150, 150) for x in range(0, 330, 33)] + [(3, 3, 80, 80)]
    assert sum(1 for r in rects if r[2] == 112) > 2 * CHUNK_TILES
    alone = [tile_batch(region, [rect], 112, MEAN, STD, dtype=dtype) for rect in rects]
    got = tile_batch(region, rects, 112, MEAN, STD, dtype=dtype)
    assert np.array_equal(got.images, np.concatenate([a.images for a in alone]))
    assert np.array_equal(got.tissue_fraction, np.concatenate([a.tissue_fraction for a in alone]))
    out = np.full((len(rects), 3, 112, 112), np.nan, dtype)
    into = tile_batch(region, rects, 112, MEAN, STD, dtype=dtype, out=out, measure_tissue=False)
    assert into.images is out
    assert np.array_equal(out, got.images)
    assert np.isnan(into.tissue_fraction).all()


def test_reference_rejects_an_out_of_the_wrong_shape(region: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"out must be float32 of shape \(2, 3, 32, 32\)"):
        tile_batch(region, [(0, 0, 32, 32), (32, 0, 32, 32)], 32, MEAN, STD, out=np.empty((2, 3, 32, 31), np.float32))


def test_resize_weights_rows_sum_to_one_and_identity() -> None:
    w = resize_weights(300, 224)
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert np.array_equal(resize_weights(64, 64), np.eye(64, dtype=np.float32))


def test_tissue_fraction_separates_glass_from_tissue() -> None:
    rng = np.random.default_rng(3)
    glass = np.full((128, 128, 3), 240, np.uint8)
    tissue = render_tile(rng, 128, False)
    half = render_tile(rng, 128, True, tissue_fraction=0.5)
    region = np.concatenate([glass, tissue, half], 1)
    b = tile_batch(region, [(0, 0, 128, 128), (128, 0, 128, 128), (256, 0, 128, 128)], 64, MEAN, STD)
    assert b.tissue_fraction[0] == 0.0
    assert b.tissue_fraction[1] > 0.9
    assert 0.3 < b.tissue_fraction[2] < 0.7


@pytest.mark.parametrize(
    "rect, match",
    [((0, 0, 0, 10), "empty or outside"), ((470, 0, 20, 20), "outside the 480x480"), ((-1, 0, 5, 5), "outside")],
)
def test_reference_rejects_bad_rectangles(region: np.ndarray, rect: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tile_batch(region, [rect], 32, MEAN, STD)


def test_reference_rejects_non_rgb_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        tile_batch(np.zeros((8, 8, 3), np.float32), [(0, 0, 8, 8)], 8, MEAN, STD)


@pytest.mark.parametrize("arch", ARCHES)
def test_nvcc_compiles_tiling_kernel(arch: str, tmp_path: Path) -> None:
    nvcc = NVCC if NVCC.exists() else shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed (/usr/local/bin/nvcc absent and none on PATH)")
    out = tmp_path / f"tiling_{arch}.cubin"
    proc = subprocess.run(
        [str(nvcc), "-cubin", f"-arch={arch}", "-Werror", "all-warnings", "-o", str(out), str(CU_SOURCE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_device_code_rounds_like_the_host_build(tmp_path: Path) -> None:
    """No fused multiply-add in the device code: every multiply rounds (.rn), as on the host and in NumPy.

    The host build is compared with the reference on every machine; this keeps the GPU's bits the same.
    """
    nvcc = NVCC if NVCC.exists() else shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed (/usr/local/bin/nvcc absent and none on PATH)")
    ptx = tmp_path / "tiling.ptx"
    proc = subprocess.run([str(nvcc), "-ptx", "-arch=sm_90", "-o", str(ptx), str(CU_SOURCE)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ops = re.findall(r"\b(fma|mul)((?:\.[a-z0-9]+)*)\.f(?:32|64)\b", ptx.read_text())
    assert ops, "no floating-point multiplies found in the PTX"
    assert all(op == "mul" and ".rn" in mods for op, mods in ops), sorted(set(ops))


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(RECT_SETS))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cuda_kernel_matches_reference(region: np.ndarray, name: str, dtype: type) -> None:
    from engines.kernels.cuda import CudaTiler, cuda_available

    ok, why = cuda_available()
    if not ok:
        pytest.skip(why)
    rects = RECT_SETS[name]
    got = CudaTiler(96, MEAN, STD, dtype=dtype).run(region, rects)
    assert_matches_reference(got, tile_batch(region, rects, 96, MEAN, STD, dtype=dtype), 96)
