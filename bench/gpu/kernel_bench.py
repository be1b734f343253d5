"""Tiling kernel on the GPU: bandwidth against the device's peak, tiles/s against the NumPy reference.

    python3 bench/gpu/kernel_bench.py [--json FILE] [--side 8192] [--repeats 20]

For each case (tile side -> 224, float32 or float16) over a ``side`` x ``side``
RGB region cut into whole tiles: the kernel alone (CUDA events, median of
``repeats`` launches after warm-ups), the whole ``CudaTiler.run`` (copies over
PCIe included) and the NumPy reference on this machine's CPU (a sample of the
tiles), the kernel's bytes moved (engines.kernels.plan.bytes_moved) per second
against the peak from the device's memory clock and bus width, and a
device-to-device copy for the bandwidth actually reachable. Each case also
compares the GPU's batch with the reference (float32 max |diff|, float16 ulps,
tissue counts). Needs pycuda and a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engines.kernels.cuda import CudaTiler  # noqa: E402
from engines.kernels.plan import bytes_moved, plan_launch  # noqa: E402
from engines.kernels.reference import tile_batch  # noqa: E402

MEAN, STD = (0.70, 0.55, 0.70), (0.20, 0.22, 0.18)
SIZE = 224
CASES = ((256, np.float32), (256, np.float16), (448, np.float16), (224, np.float16), (512, np.float16))


def device_facts(drv: Any) -> dict[str, Any]:
    dev = drv.Context.get_device()
    a = drv.device_attribute
    clock_khz = dev.get_attribute(a.MEMORY_CLOCK_RATE)
    bus_bits = dev.get_attribute(a.GLOBAL_MEMORY_BUS_WIDTH)
    return {"name": dev.name(), "compute_capability": "%d.%d" % dev.compute_capability(),
            "multiprocessors": dev.get_attribute(a.MULTIPROCESSOR_COUNT), "memory_clock_khz": clock_khz,
            "bus_width_bits": bus_bits, "total_memory_gib": round(dev.total_memory() / 2**30, 1),
            # double data rate: two transfers per clock on each of the bus's bits
            "peak_gb_s": round(2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, 1)}


def copy_gb_s(drv: Any, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, bytes read plus written per second (best of 5)."""
    src, dst = drv.mem_alloc(nbytes), drv.mem_alloc(nbytes)
    start, end = drv.Event(), drv.Event()
    best = float("inf")
    for _ in range(6):
        start.record()
        drv.memcpy_dtod(dst, src, nbytes)
        end.record()
        end.synchronize()
        best = min(best, end.time_since(start) / 1e3)
    src.free()
    dst.free()
    return round(2 * nbytes / best / 1e9, 1)


def compare(got: Any, want: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"tissue_count_mismatches": int(np.count_nonzero(
        np.rint(got.tissue_fraction * SIZE * SIZE) != np.rint(want.tissue_fraction * SIZE * SIZE)))}
    if got.images.dtype == np.float16:
        def ordered(a: np.ndarray) -> np.ndarray:
            bits = a.view(np.int16).astype(np.int32)
            return np.where(bits < 0, -(bits & 0x7FFF), bits)
        out["max_ulps"] = int(np.abs(ordered(got.images) - ordered(want.images)).max())
    else:
        out["max_abs_diff"] = float(np.abs(got.images.astype(np.float64) - want.images).max())
    return out


def case(drv: Any, region: np.ndarray, side: int, dtype: type, repeats: int, peak: float) -> dict[str, Any]:
    n = region.shape[0] // side
    rects = np.array([(c * side, r * side, side, side) for r in range(n) for c in range(n)], np.int32)
    tiler = CudaTiler(SIZE, MEAN, STD, dtype=dtype)
    got = tiler.run(region, rects)  # compiles, allocates, warms up
    sample = rects[:: max(1, len(rects) // 64)][:64]
    t = time.perf_counter()
    want = tile_batch(region, sample, SIZE, MEAN, STD, dtype=dtype)
    ref_s = (time.perf_counter() - t) / len(sample)
    index = {tuple(r): i for i, r in enumerate(rects.tolist())}
    picked = [index[tuple(r)] for r in sample.tolist()]
    check = compare(type(got)(images=got.images[picked], tissue_fraction=got.tissue_fraction[picked]), want)
    tiler._ctx.push()
    try:
        tiler.upload(region, rects)
        start, end = drv.Event(), drv.Event()
        times = []
        for i in range(repeats + 3):
            start.record(tiler._stream)
            tiler.launch(len(rects))
            end.record(tiler._stream)
            end.synchronize()
            if i >= 3:
                times.append(end.time_since(start) / 1e3)
    finally:
        tiler._ctx.pop()
    kernel_s = statistics.median(times)
    t = time.perf_counter()
    for _ in range(3):
        tiler.run(region, rects)
    run_s = (time.perf_counter() - t) / 3
    moved = bytes_moved(rects, SIZE, np.dtype(dtype).itemsize)
    gb_s = moved / kernel_s / 1e9
    plan = plan_launch(rects, SIZE)
    return {"case": f"{side}->{SIZE} {np.dtype(dtype).name}", "tiles": len(rects), "kernel_ms": round(kernel_s * 1e3, 3),
            "kernel_tiles_per_s": round(len(rects) / kernel_s), "bytes_moved": moved, "kernel_gb_s": round(gb_s, 1),
            "fraction_of_peak": round(gb_s / peak, 3), "run_tiles_per_s": round(len(rects) / run_s),
            "reference_tiles_per_s": round(1 / ref_s, 1), "kernel_vs_reference": round(ref_s * len(rects) / kernel_s, 1),
            "run_vs_reference": round(ref_s * len(rects) / run_s, 1), "plan": plan.__dict__, "vs_reference": check}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--side", type=int, default=8192, help="region side in pixels (default 8192)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    import pycuda.autoinit  # noqa: F401
    import pycuda.driver as drv

    facts = device_facts(drv)
    facts["copy_gb_s"] = copy_gb_s(drv)
    rng = np.random.default_rng(0)
    # blocks of colour with noise: tissue and glass both present, nothing compresses away
    coarse = rng.integers(0, 256, (args.side // 64, args.side // 64, 3), dtype=np.uint8)
    region = np.repeat(np.repeat(coarse, 64, 0), 64, 1)
    region = np.ascontiguousarray(region ^ rng.integers(0, 16, region.shape, dtype=np.uint8))
    cases = []
    for side, dtype in CASES:
        cases.append(case(drv, region, side, dtype, args.repeats, facts["peak_gb_s"]))
        print(json.dumps(cases[-1]), flush=True)
    result = {"device": facts, "region_side": args.side, "cases": cases}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["device"]))


if __name__ == "__main__":
    main()
