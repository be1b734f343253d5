"""``tiling.cu`` compiled for the CPU (engines.kernels.host) against the NumPy reference, on every machine.

The host build runs the kernel's own ``__host__ __device__`` functions block by
block, so this checks the kernel's arithmetic without a GPU; the mutation test
checks that the comparison would notice a wrong weight.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from engines.errors import RuntimeMissing
from engines.kernels import CU_SOURCE, tile_batch
from engines.kernels.host import HostTiler, build_host_library, find_nvcc
from engines.kernels.plan import SHARED_LIMIT, plan_launch
from tests.engines._tiling import MEAN, RECT_SETS, STD, assert_matches_reference, make_region

SIZE = 112


def _nvcc_or_skip() -> None:
    try:
        find_nvcc()
    except RuntimeMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def region() -> np.ndarray:
    return make_region()


@pytest.fixture(scope="module")
def host(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> HostTiler:
    """The host library, built once per source change into pytest's cache directory (if the cache is on)."""
    _nvcc_or_skip()
    cache = getattr(request.config, "cache", None)
    build_dir = cache.mkdir("tiling-host") if cache is not None else tmp_path_factory.mktemp("tiling-host")
    return HostTiler(build_host_library(CU_SOURCE, build_dir))


@pytest.mark.parametrize("staging", ["shared", "global"])
@pytest.mark.parametrize("name", sorted(RECT_SETS))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_host_kernel_matches_reference(host: HostTiler, region: np.ndarray, name: str, dtype: type,
                                       staging: str) -> None:
    rects = RECT_SETS[name]
    plan = plan_launch(np.array(rects), SIZE)
    if staging == "global":  # no staging room: every band reads the region in place
        plan = dataclasses.replace(plan, stage_bytes=0)
    got = host.run(region, rects, SIZE, MEAN, STD, dtype=dtype, plan=plan)
    want = tile_batch(region, rects, SIZE, MEAN, STD, dtype=dtype)
    assert_matches_reference(got, want, SIZE)
    if staging == "global":
        assert host.bands[1] == 0 < host.bands[0]


def test_host_kernel_over_many_bands_and_odd_sizes(host: HostTiler, region: np.ndarray) -> None:
    """Output sizes that leave a short last band; one-row bands; tissue fractions that are not 0 or 1."""
    rects = [(x, y, 157, 203) for x in (0, 211, 323) for y in (0, 140, 277)]
    for size, band_rows in ((61, None), (200, 1), (33, 7)):
        plan = plan_launch(np.array(rects), size)
        if band_rows:
            plan = dataclasses.replace(plan, band_rows=band_rows, grid=(-(-size // band_rows), len(rects)))
        got = host.run(region, rects, size, MEAN, STD, plan=plan)
        assert_matches_reference(got, tile_batch(region, rects, size, MEAN, STD), size)
    assert 0.0 < got.tissue_fraction.min() < got.tissue_fraction.max() <= 1.0


@pytest.mark.parametrize(
    "original, broken",
    [
        ("return x < 1.0 ? 1.0 - x : 0.0;", "return x < 1.0 ? 1.0 - 0.9 * x : 0.0;"),  # a wrong filter weight
        ("const double centre = dmul_rn(o + 0.5, scale);", "const double centre = dmul_rn(o, scale);"),  # shifted
    ],
)
def test_comparison_fails_on_a_broken_kernel(tmp_path: Path, region: np.ndarray, original: str, broken: str) -> None:
    _nvcc_or_skip()
    source = CU_SOURCE.read_text()
    assert source.count(original) == 1, f"the mutation target {original!r} is not in tiling.cu once"
    mutant = tmp_path / "tiling.cu"
    mutant.write_text(source.replace(original, broken))
    host = HostTiler(build_host_library(mutant, tmp_path / "build"))
    rects = RECT_SETS["downscale"]
    got = host.run(region, rects, SIZE, MEAN, STD)
    with pytest.raises(AssertionError, match="float32 differs by"):
        assert_matches_reference(got, tile_batch(region, rects, SIZE, MEAN, STD), SIZE)


def test_build_is_cached_by_source_and_replaced_when_it_changes(tmp_path: Path) -> None:
    _nvcc_or_skip()
    copy = tmp_path / "tiling.cu"
    copy.write_text(CU_SOURCE.read_text())
    first = build_host_library(copy, tmp_path / "build")
    stamp = first.stat().st_mtime_ns
    assert build_host_library(copy, tmp_path / "build") == first and first.stat().st_mtime_ns == stamp
    copy.write_text(CU_SOURCE.read_text() + "\n// changed\n")
    second = build_host_library(copy, tmp_path / "build")
    assert second != first and sorted((tmp_path / "build").glob("*.so")) == [second]


def test_plan_fits_shared_memory_and_covers_every_row() -> None:
    for size in (1, 96, 112, 224, 512):
        for side in (1, size // 2 + 1, size, 3 * size):
            plan = plan_launch(np.array([(0, 0, side, side)]), size)
            assert plan.shared_bytes <= SHARED_LIMIT - 64 and plan.stage_bytes >= 0
            assert plan.grid[0] * plan.band_rows >= size > (plan.grid[0] - 1) * plan.band_rows


@pytest.mark.parametrize(
    "rects, size, match",
    [
        ([(0, 0, 20000, 20000)], 224, r"20000-pixel tile side resized to 224 needs 180 filter taps"),
        (np.zeros((0, 4)), 224, r"1 to 65535 tiles, got size=224, 0 tiles"),
        ([(0, 0, 8, 8)], 0, r"positive size"),
    ],
)
def test_plan_rejects_what_cannot_launch(rects: object, size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_launch(np.asarray(rects), size)


def test_common_tiles_are_staged_in_shared_memory(host: HostTiler, region: np.ndarray) -> None:
    """Usual down-scales stage every band; the plan asks for no more room than the widest band needs."""
    big = np.ascontiguousarray(np.tile(region, (2, 2, 1)))  # 960 x 960
    for side, size in ((256, 224), (448, 224), (224, 224), (150, 112), (80, 112), (800, 224)):
        rects = [(0, 0, side, side), (960 - side, 960 - side, side, side)]
        plan = plan_launch(np.array(rects), size)
        assert_matches_reference(host.run(big, rects, size, MEAN, STD, plan=plan),
                                 tile_batch(big, rects, size, MEAN, STD), size)
        assert host.bands == (2 * plan.grid[0], 2 * plan.grid[0])
        assert plan.stage_bytes <= 3 * side * side + 16


def test_a_source_nvcc_rejects_raises_with_its_messages(tmp_path: Path) -> None:
    _nvcc_or_skip()
    broken = tmp_path / "tiling.cu"
    broken.write_text(CU_SOURCE.read_text().replace("struct Taps {", "struct Taps { not C++", 1))
    with pytest.raises(RuntimeError, match=r"nvcc could not build the host library from .*tiling\.cu:\n.*error"):
        build_host_library(broken, tmp_path / "build")
    assert not list((tmp_path / "build").glob("*.so"))
