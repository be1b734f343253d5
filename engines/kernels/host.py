"""``tiling.cu`` compiled for the CPU: the kernel's own arithmetic, testable without a GPU.

``nvcc -DTILING_HOST_LIBRARY`` builds the same source into a shared library
whose ``tiling_host_run`` plays every block of a launch (taps, staging, every
pixel) one after another on the CPU, calling the very ``__host__ __device__``
functions the kernel calls. :class:`HostTiler` loads it through ``ctypes`` and
has the contract of :func:`engines.kernels.reference.tile_batch`, so the tests
compare the two on every machine. Builds are cached under a directory, keyed
by the source's sha256 and the compiler flags, so nvcc runs once per change.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from engines.errors import RuntimeMissing
from engines.files import atomic_write
from engines.kernels.plan import LaunchPlan, plan_launch
from engines.kernels.reference import TileBatch, check_inputs

__all__ = ["HOST_FLAGS", "HostTiler", "build_host_library", "find_nvcc"]

#: the host build: no fused multiply-add on the CPU either (the reference's rounding); the static runtime only answers the fat-binary registration at load (no device is touched)
HOST_FLAGS = ("-O2", "-shared", "-DTILING_HOST_LIBRARY", "-cudart", "static",
              "-Xcompiler", "-fPIC,-ffp-contract=off", "-Werror", "all-warnings")


def find_nvcc() -> Path:
    """The CUDA compiler: ``$NVCC``, /usr/local/bin/nvcc, /usr/local/cuda/bin/nvcc or the PATH's."""
    for candidate in (os.environ.get("NVCC"), "/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc", shutil.which("nvcc")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise RuntimeMissing("nvcc not found ($NVCC, /usr/local/bin, /usr/local/cuda/bin, PATH): install the CUDA toolkit")


def build_host_library(source: Path, cache_dir: Path, *, timeout: float = 300.0) -> Path:
    """Compile ``source`` for the host into ``cache_dir``, reused while source and flags are unchanged.

    A new build replaces the earlier ones in ``cache_dir``; nvcc's failure raises with its messages.
    """
    text = source.read_bytes()
    key = hashlib.sha256(text + "\0".join(HOST_FLAGS).encode()).hexdigest()[:20]
    lib = cache_dir / f"tiling_host-{key}.so"
    if lib.is_file():
        return lib
    cache_dir.mkdir(parents=True, exist_ok=True)
    nvcc = find_nvcc()
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        src = Path(tmp) / "tiling.cu"  # nvcc names the input by extension: keep .cu
        src.write_bytes(text)
        out = Path(tmp) / "tiling_host.so"
        proc = subprocess.run([str(nvcc), *HOST_FLAGS, "-o", str(out), str(src)],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc could not build the host library from {source}:\n{proc.stderr[-4000:]}")
        atomic_write(lib, out.read_bytes(), 0o755)
    for stale in cache_dir.glob("tiling_host-*.so"):  # builds of earlier sources
        if stale != lib:
            stale.unlink(missing_ok=True)
    return lib


class HostTiler:
    """The kernel's arithmetic on the CPU: same arguments and result as the reference's ``tile_batch``."""

    def __init__(self, library: Path) -> None:
        self._lib = ctypes.CDLL(str(library))
        fn = self._lib.tiling_host_run
        p = ctypes.c_void_p
        i = ctypes.c_int
        fn.argtypes = [p, i, p, i, i, p, p, ctypes.c_float, i, i, i, i, p, p, p]
        fn.restype = i
        self._run = fn
        #: (bands, bands staged in shared memory) of the last run
        self.bands = (0, 0)

    def run(
        self,
        region: np.ndarray,
        rects: np.ndarray | Sequence[Sequence[int]],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        dtype: type[np.floating] | np.dtype = np.float32,
        tissue_threshold: float = 20.0,
        plan: LaunchPlan | None = None,
    ) -> TileBatch:
        """Resize, normalize and count tissue of every tile; ``plan`` overrides the launch geometry."""
        out_dtype = np.dtype(dtype)
        if out_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"dtype must be float32 or float16, got {out_dtype}")
        r = np.ascontiguousarray(check_inputs(region, np.asarray(rects), size), dtype=np.int32)
        plan = plan or plan_launch(r, size)
        region = np.ascontiguousarray(region)
        n = len(r)
        images = np.empty((n, 3, size, size), out_dtype)
        counts = np.zeros(n, np.int32)
        m = np.ascontiguousarray(mean, np.float32)
        s = np.ascontiguousarray(std, np.float32)
        bands = np.zeros(2, np.int32)
        rc = self._run(region.ctypes.data, region.shape[1], r.ctypes.data, n, size, m.ctypes.data, s.ctypes.data,
                       float(tissue_threshold), plan.taps, plan.band_rows, plan.stage_bytes,
                       int(out_dtype == np.float16), images.ctypes.data, counts.ctypes.data,
                       bands.ctypes.data)
        if rc != 0:
            raise MemoryError(f"tiling_host_run could not allocate {plan.shared_bytes} bytes of block memory")
        self.bands = (int(bands[0]), int(bands[1]))
        return TileBatch(images=images, tissue_fraction=counts.astype(np.float32) / np.float32(size * size))
