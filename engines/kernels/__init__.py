"""Tiling kernels: decoded RGB region + tile rectangles -> normalized NCHW batch.

``reference`` is the NumPy implementation that runs everywhere; ``tiling.cu``
is the CUDA kernel with the same contract, launched by ``cuda`` (pycuda, the
``gpu`` extra, imported only when asked for) with the geometry ``plan``
computes; ``host`` compiles the same source for the CPU, so the kernel's
arithmetic is tested on machines without a GPU (docs/tiling_kernel.md).
"""

from __future__ import annotations

from pathlib import Path

from engines.kernels.reference import TileBatch, check_inputs, resize_weights, tile_batch

__all__ = ["CU_SOURCE", "TileBatch", "check_inputs", "resize_weights", "tile_batch"]

#: the CUDA source shipped beside this module (package data, see pyproject's ``*.cu``)
CU_SOURCE = Path(__file__).with_name("tiling.cu")
