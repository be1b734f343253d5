"""pycuda launcher for ``tiling.cu`` (the ``gpu`` extra; imported only when used).

One :class:`CudaTiler` owns a CUDA stream, page-locked (pinned) host buffers
and device buffers grown to the largest region and batch seen so far, so a
call allocates nothing: the region goes up, the kernel runs and the batch
comes back as asynchronous operations on the stream, and the calling thread
waits once at the end (the pipeline's reader thread, while the engine runs
the previous batch on the main thread). ``run`` has the same contract as
:func:`engines.kernels.reference.tile_batch`.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from engines.errors import RuntimeMissing
from engines.kernels.plan import LaunchPlan, plan_launch
from engines.kernels.reference import TileBatch

__all__ = ["CudaTiler", "cuda_available"]

logger = logging.getLogger(__name__)


def _import_pycuda() -> tuple[Any, Any, Any]:
    try:
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as drv
        from pycuda.compiler import SourceModule
    except Exception as exc:  # ImportError, or no device / driver
        raise RuntimeMissing(f"CUDA tiling needs pycuda and a CUDA device: {exc}") from exc
    return drv, SourceModule, pycuda.autoinit


def cuda_available() -> tuple[bool, str]:
    """Whether the CUDA kernel can run here, and why not when it cannot."""
    try:
        _import_pycuda()
    except RuntimeMissing as exc:
        return False, str(exc)
    return True, "ok"


class CudaTiler:
    """Runs the tiling kernel on one stream with pinned host memory."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        dtype: type[np.floating] | np.dtype = np.float32,
        tissue_threshold: float = 20.0,
    ) -> None:
        from engines.kernels import CU_SOURCE

        self._drv, source_module, autoinit = _import_pycuda()
        #: pycuda contexts are per thread: run() pushes this one, so a reader thread can use it
        self._ctx = autoinit.context
        self.size = int(size)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"dtype must be float32 or float16, got {self.dtype}")
        self.tissue_threshold = float(tissue_threshold)
        module = source_module(CU_SOURCE.read_text(), no_extern_c=True)
        name = "tile_batch_f32" if self.dtype == np.float32 else "tile_batch_f16"
        self._kernel = module.get_function(name)
        self._stream = self._drv.Stream()
        self._mean = self._drv.to_device(np.asarray(mean, np.float32))
        self._std = self._drv.to_device(np.asarray(std, np.float32))
        self._cap: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict[str, Any] = {}
        self._plan: LaunchPlan | None = None
        self._region_width = 0

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, Any]:
        """Pinned host view and device allocation, grown (never shrunk) on demand."""
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if self._cap.get(key, 0) < nbytes:
            self._host[key] = self._drv.pagelocked_empty(nbytes, np.uint8)
            self._dev[key] = self._drv.mem_alloc(nbytes)
            self._cap[key] = nbytes
        host = self._host[key][:nbytes].view(dtype).reshape(shape)
        return host, self._dev[key]

    def run(self, region: np.ndarray, rects: np.ndarray | Sequence[Sequence[int]]) -> TileBatch:
        """Resize, normalize and count tissue for every rectangle of ``region``."""
        self._ctx.push()
        try:
            n = self.upload(region, rects)
            self.launch(n)
            return self.download(n)
        finally:
            self._ctx.pop()

    def upload(self, region: np.ndarray, rects: np.ndarray | Sequence[Sequence[int]]) -> int:
        """Queue the copies of ``region`` and its rectangles to the device; return the tile count.

        ``upload``, ``launch`` and ``download`` are the steps of :meth:`run`, apart so a benchmark
        can time the kernel alone (CUDA events around ``launch``); call them with the context pushed.
        """
        from engines.kernels.reference import check_inputs

        r = check_inputs(region, np.asarray(rects), self.size).astype(np.int32)
        self._plan = plan_launch(r, self.size)
        region = np.ascontiguousarray(region)
        h_region, d_region = self._buffer("region", region.shape, np.dtype(np.uint8))
        h_region[...] = region
        h_rects, d_rects = self._buffer("rects", r.shape, np.dtype(np.int32))
        h_rects[...] = r
        self._region_width = region.shape[1]
        self._drv.memcpy_htod_async(d_region, h_region, self._stream)
        self._drv.memcpy_htod_async(d_rects, h_rects, self._stream)
        return len(r)

    def launch(self, n: int) -> None:
        """Queue the kernel over the ``n`` uploaded tiles (tissue counts zeroed first)."""
        s, plan = self.size, self._plan
        if plan is None:
            raise RuntimeError("CudaTiler.launch() needs an upload() first")
        _, d_out = self._buffer("out", (n, 3, s, s), self.dtype)
        _, d_count = self._buffer("count", (n,), np.dtype(np.int32))
        self._drv.memset_d32_async(d_count, 0, n, self._stream)
        self._kernel(
            self._dev["region"], np.int32(self._region_width), self._dev["rects"], np.int32(n), np.int32(s),
            self._mean, self._std, np.float32(self.tissue_threshold),
            np.int32(plan.taps), np.int32(plan.band_rows), np.int32(plan.stage_bytes), d_out, d_count,
            block=(plan.block, 1, 1), grid=plan.grid, shared=plan.shared_bytes, stream=self._stream,
        )

    def download(self, n: int) -> TileBatch:
        """Copy the batch and counts back, wait for the stream, return them."""
        s = self.size
        h_out, d_out = self._buffer("out", (n, 3, s, s), self.dtype)
        h_count, d_count = self._buffer("count", (n,), np.dtype(np.int32))
        self._drv.memcpy_dtoh_async(h_out, d_out, self._stream)
        self._drv.memcpy_dtoh_async(h_count, d_count, self._stream)
        self._stream.synchronize()
        fraction = h_count.astype(np.float32) / np.float32(s * s)
        return TileBatch(images=h_out.copy(), tissue_fraction=fraction)
