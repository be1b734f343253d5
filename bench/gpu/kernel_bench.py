"""Tiling kernel on the GPU: bandwidth against the device's peak, tiles/s against the NumPy reference.

    python3 bench/gpu/kernel_bench.py [--json FILE] [--backend pycuda|cupy|host] [--side 8192] [--repeats 20]

For each case (tile side -> 224, float32 or float16) over a ``side`` x ``side``
RGB region cut into whole tiles: the kernel alone (CUDA events, median of
``repeats`` launches after warm-ups), the whole upload-launch-download (copies
over PCIe included) and the NumPy reference on this machine's CPU (a sample of
the tiles); the kernel's bytes moved (engines.kernels.plan.bytes_moved) per
second against the peak from the device's memory clock and bus width, and a
device-to-device copy for the bandwidth actually reachable. Each case also
compares the GPU's batch with the reference (float32 max |diff|, float16 ulps,
tissue counts). ``pycuda`` (default) runs the appliance's own launcher,
engines.kernels.cuda.CudaTiler; ``cupy`` launches the same kernel with the same
plan through CuPy, for a machine where pycuda could not be built; ``host`` runs
the kernel's CPU build, so the script itself is tested without a GPU.
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

from engines.kernels import CU_SOURCE  # noqa: E402
from engines.kernels.plan import bytes_moved, plan_launch  # noqa: E402
from engines.kernels.reference import TileBatch, tile_batch  # noqa: E402

MEAN, STD = (0.70, 0.55, 0.70), (0.20, 0.22, 0.18)
SIZE = 224
CASES = ((256, np.float32), (256, np.float16), (448, np.float16), (224, np.float16), (512, np.float16))


def peak_gb_s(clock_khz: int | None, bus_bits: int | None) -> float | None:
    """Double data rate: two transfers per clock on each bit of the bus."""
    return round(2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, 1) if clock_khz and bus_bits else None


class PycudaRunner:
    """The appliance's launcher (CudaTiler) and pycuda's events."""

    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as drv

        self.drv = drv

    def facts(self) -> dict[str, Any]:
        dev = self.drv.Context.get_device()
        a = self.drv.device_attribute
        clock = dev.get_attribute(a.MEMORY_CLOCK_RATE) if hasattr(a, "MEMORY_CLOCK_RATE") else None
        bus = dev.get_attribute(a.GLOBAL_MEMORY_BUS_WIDTH) if hasattr(a, "GLOBAL_MEMORY_BUS_WIDTH") else None
        return {"name": dev.name(), "compute_capability": "%d.%d" % dev.compute_capability(),
                "multiprocessors": dev.get_attribute(a.MULTIPROCESSOR_COUNT), "memory_clock_khz": clock,
                "bus_width_bits": bus, "total_memory_gib": round(dev.total_memory() / 2**30, 1),
                "peak_gb_s": peak_gb_s(clock, bus)}

    def copy_gb_s(self, nbytes: int = 1 << 30) -> float:
        drv = self.drv
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

    def prepare(self, region: np.ndarray, rects: np.ndarray, dtype: type) -> None:
        from engines.kernels.cuda import CudaTiler

        self.tiler = CudaTiler(SIZE, MEAN, STD, dtype=dtype)
        self.region, self.rects = region, rects

    def run(self) -> TileBatch:
        return self.tiler.run(self.region, self.rects)

    def kernel_seconds(self, repeats: int) -> float:
        tiler, drv = self.tiler, self.drv
        tiler._ctx.push()
        try:
            n = tiler.upload(self.region, self.rects)
            start, end = drv.Event(), drv.Event()
            times = []
            for i in range(repeats + 3):
                start.record(tiler._stream)
                tiler.launch(n)
                end.record(tiler._stream)
                end.synchronize()
                times.append(end.time_since(start) / 1e3)
        finally:
            tiler._ctx.pop()
        return statistics.median(times[3:])


class CupyRunner:
    """The same kernel and plan launched through CuPy (nvcc backend)."""

    def __init__(self) -> None:
        import cupy as cp

        self.cp = cp

    def facts(self) -> dict[str, Any]:
        rt = self.cp.cuda.runtime
        dev = self.cp.cuda.Device()
        props = rt.getDeviceProperties(dev.id)
        clock, bus = rt.deviceGetAttribute(36, dev.id), rt.deviceGetAttribute(37, dev.id)  # memory clock, bus width
        return {"name": props["name"].decode(), "compute_capability": "%d.%d" % (props["major"], props["minor"]),
                "multiprocessors": props["multiProcessorCount"], "memory_clock_khz": clock, "bus_width_bits": bus,
                "total_memory_gib": round(props["totalGlobalMem"] / 2**30, 1), "peak_gb_s": peak_gb_s(clock, bus)}

    def copy_gb_s(self, nbytes: int = 1 << 30) -> float:
        cp = self.cp
        src, dst = cp.empty(nbytes, cp.uint8), cp.empty(nbytes, cp.uint8)
        best = float("inf")
        for _ in range(6):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            dst[...] = src
            end.record()
            end.synchronize()
            best = min(best, cp.cuda.get_elapsed_time(start, end) / 1e3)
        return round(2 * nbytes / best / 1e9, 1)

    def prepare(self, region: np.ndarray, rects: np.ndarray, dtype: type) -> None:
        cp = self.cp
        module = cp.RawModule(code=CU_SOURCE.read_text(), backend="nvcc")
        self.kernel = module.get_function("tile_batch_f32" if dtype == np.float32 else "tile_batch_f16")
        self.region, self.rects, self.dtype = region, rects, dtype
        self.plan = plan_launch(rects, SIZE)
        self.mean, self.std = cp.asarray(MEAN, cp.float32), cp.asarray(STD, cp.float32)

    def _launch(self, d_region: Any, d_rects: Any, out: Any, count: Any) -> None:
        p = self.plan
        count.fill(0)
        self.kernel(p.grid, (p.block,), (
            d_region, np.int32(self.region.shape[1]), d_rects, np.int32(len(self.rects)), np.int32(SIZE),
            self.mean, self.std, np.float32(20.0), np.int32(p.taps),
            np.int32(p.band_rows), np.int32(p.stage_bytes), out, count), shared_mem=p.shared_bytes)

    def _buffers(self) -> tuple[Any, Any, Any, Any]:
        cp = self.cp
        n = len(self.rects)
        return (cp.asarray(self.region), cp.asarray(self.rects.astype(np.int32)),
                cp.empty((n, 3, SIZE, SIZE), self.dtype), cp.zeros(n, cp.int32))

    def run(self) -> TileBatch:
        d_region, d_rects, out, count = self._buffers()
        self._launch(d_region, d_rects, out, count)
        images, counts = out.get(), count.get()
        return TileBatch(images=images, tissue_fraction=counts.astype(np.float32) / np.float32(SIZE * SIZE))

    def kernel_seconds(self, repeats: int) -> float:
        cp = self.cp
        buffers = self._buffers()
        times = []
        for _ in range(repeats + 3):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            self._launch(*buffers)
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
        return statistics.median(times[3:])


class HostRunner:
    """The kernel's host build (engines.kernels.host) on the CPU: checks this script without a GPU."""

    def __init__(self) -> None:
        import tempfile

        from engines.kernels.host import HostTiler, build_host_library

        cache = Path(tempfile.gettempdir()) / "tiling-host-build"
        self.host = HostTiler(build_host_library(CU_SOURCE, cache))

    def facts(self) -> dict[str, Any]:
        return {"name": "CPU, host build of tiling.cu", "peak_gb_s": None}

    def copy_gb_s(self) -> None:
        return None

    def prepare(self, region: np.ndarray, rects: np.ndarray, dtype: type) -> None:
        self.region, self.rects, self.dtype = region, rects, dtype

    def run(self) -> TileBatch:
        return self.host.run(self.region, self.rects, SIZE, MEAN, STD, dtype=self.dtype)

    def kernel_seconds(self, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            self.run()
            times.append(time.perf_counter() - t)
        return statistics.median(times)


RUNNERS: dict[str, type[Any]] = {"pycuda": PycudaRunner, "cupy": CupyRunner, "host": HostRunner}


def compare(got: TileBatch, want: TileBatch) -> dict[str, Any]:
    counts = [np.rint(b.tissue_fraction * SIZE * SIZE) for b in (got, want)]
    out: dict[str, Any] = {"tissue_count_mismatches": int(np.count_nonzero(counts[0] != counts[1]))}
    if got.images.dtype == np.float16:
        def ordered(a: np.ndarray) -> np.ndarray:
            bits = a.view(np.int16).astype(np.int32)
            return np.where(bits < 0, -(bits & 0x7FFF), bits)
        out["max_ulps"] = int(np.abs(ordered(got.images) - ordered(want.images)).max())
    else:
        out["max_abs_diff"] = float(np.abs(got.images.astype(np.float64) - want.images).max())
    return out


def case(runner: Any, region: np.ndarray, side: int, dtype: type, repeats: int, peak: float | None) -> dict[str, Any]:
    n = region.shape[0] // side
    rects = np.array([(c * side, r * side, side, side) for r in range(n) for c in range(n)], np.int32)
    runner.prepare(region, rects, dtype)
    got = runner.run()  # compiles, allocates, warms up
    picked = np.arange(0, len(rects), max(1, len(rects) // 64))[:64]
    t = time.perf_counter()
    want = tile_batch(region, rects[picked], SIZE, MEAN, STD, dtype=dtype)
    ref_s = (time.perf_counter() - t) / len(picked)
    check = compare(TileBatch(images=got.images[picked], tissue_fraction=got.tissue_fraction[picked]), want)
    kernel_s = runner.kernel_seconds(repeats)
    t = time.perf_counter()
    for _ in range(3):
        runner.run()
    run_s = (time.perf_counter() - t) / 3
    moved = bytes_moved(rects, SIZE, np.dtype(dtype).itemsize)
    gb_s = moved / kernel_s / 1e9
    return {"case": f"{side}->{SIZE} {np.dtype(dtype).name}", "tiles": len(rects),
            "kernel_ms": round(kernel_s * 1e3, 3), "kernel_tiles_per_s": round(len(rects) / kernel_s),
            "bytes_moved": moved, "kernel_gb_s": round(gb_s, 1),
            "fraction_of_peak": round(gb_s / peak, 3) if peak else None,
            "with_copies_tiles_per_s": round(len(rects) / run_s), "reference_tiles_per_s": round(1 / ref_s, 1),
            "kernel_vs_reference": round(ref_s * len(rects) / kernel_s, 1),
            "with_copies_vs_reference": round(ref_s * len(rects) / run_s, 1),
            "plan": plan_launch(rects, SIZE).__dict__, "vs_reference": check}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--backend", choices=sorted(RUNNERS), default="pycuda",
                    help="pycuda (the appliance's launcher), cupy, or host (the kernel's CPU build, no GPU)")
    ap.add_argument("--side", type=int, default=8192, help="region side in pixels (default 8192)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    runner = RUNNERS[args.backend]()
    facts = runner.facts()
    facts["copy_gb_s"] = runner.copy_gb_s()
    rng = np.random.default_rng(0)
    # blocks of colour with noise: tissue-like and glass-like pixels both present
    coarse = rng.integers(0, 256, (args.side // 64, args.side // 64, 3), dtype=np.uint8)
    region = np.repeat(np.repeat(coarse, 64, 0), 64, 1)
    region = np.ascontiguousarray(region ^ rng.integers(0, 16, region.shape, dtype=np.uint8))
    result: dict[str, Any] = {"backend": args.backend, "device": facts, "region_side": args.side, "cases": []}
    print(json.dumps(facts), flush=True)
    for side, dtype in CASES:
        result["cases"].append(case(runner, region, side, dtype, args.repeats, facts["peak_gb_s"]))
        print(json.dumps(result["cases"][-1]), flush=True)
        if args.json:  # after every case, so a timeout keeps what was measured
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
