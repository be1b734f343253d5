"""Tile embeddings of one slide job: bounded in memory, durable across restarts.

With a work directory (the job's ``<data_dir>/work/<job_id>/``) the
embeddings live in ``embeddings.f32``, a raw float32 (tiles, D) file mapped
with ``np.memmap``, so the bag never has to fit in memory; at batch
boundaries :meth:`EmbeddingStore.checkpoint` flushes and fsyncs the rows done
so far and then replaces ``embeddings.json`` (temporary name, fsync, rename):
a small header with the job id, the tile engine's version and manifest hash,
the hash of the tile list (level, tile size, positions) and the number of
tiles saved. A job that starts again (restart after a crash, lost lease,
preemption) resumes from those tiles when every field matches, and discards
them when one does not. Without a work directory the embeddings stay in
memory up to ``budget_bytes`` and go to a temporary memmap beyond it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.files import atomic_write, fsync_dir

__all__ = ["BagKey", "EmbeddingStore", "tiles_digest"]

logger = logging.getLogger(__name__)

FORMAT = 1
HEADER_NAME = "embeddings.json"
DATA_NAME = "embeddings.f32"


def tiles_digest(level_uid: str, level_index: int, tile_px: int, tile_size: int, mpp: float,
                 positions: np.ndarray) -> str:
    """sha256 of what decides the tiles and their order: level, tile geometry, the grid's positions."""
    digest = hashlib.sha256(f"{level_uid}|{level_index}|{tile_px}|{tile_size}|{mpp!r}|".encode())
    digest.update(np.ascontiguousarray(positions, np.int64).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class BagKey:
    """What saved embeddings must match to be reused."""

    job_id: str
    engine: str  #: tile engine TASK/VERSION
    engine_sha256: str  #: its manifest hash
    tiles_sha256: str  #: :func:`tiles_digest`
    total: int  #: tiles in the grid


class EmbeddingStore:
    """The (total, D) float32 embeddings of a job's tiles, filled in grid order; see the module docstring."""

    def __init__(self, key: BagKey, work_dir: Path | None, budget_bytes: int) -> None:
        self.key, self.work_dir, self.budget_bytes = key, work_dir, budget_bytes
        self.done = 0  #: tiles saved by the last checkpoint (or resumed)
        self._array: np.ndarray | None = None
        self._temp: tempfile.TemporaryDirectory[str] | None = None

    # ------------------------------------------------------------------ resume

    def resume(self) -> int:
        """Reopen saved embeddings that match :attr:`key`; return how many tiles they cover (0: none)."""
        if self.work_dir is None:
            return 0
        header = self._read_header()
        if header is None:
            return 0
        problem = self._mismatch(header)
        if problem:
            logger.warning("job %s: saved tile embeddings discarded: %s", self.key.job_id, problem)
            self.discard()
            return 0
        self._array = np.memmap(self.work_dir / DATA_NAME, np.float32, "r+", shape=(self.key.total, header["dim"]))
        self.done = int(header["done"])
        return self.done

    def _read_header(self) -> dict[str, Any] | None:
        assert self.work_dir is not None
        path = self.work_dir / HEADER_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("job %s: saved tile embeddings discarded: unreadable header (%s)",
                           self.key.job_id, type(exc).__name__)
            self.discard()
            return None
        return data if isinstance(data, dict) else {}

    def _mismatch(self, header: dict[str, Any]) -> str:
        assert self.work_dir is not None
        expect = {"format": FORMAT, **asdict(self.key)}
        for name, value in expect.items():
            if header.get(name) != value:
                return f"{name} differs (saved {str(header.get(name))[:80]!r}, now {str(value)[:80]!r})"
        dim, done = header.get("dim"), header.get("done")
        if not isinstance(dim, int) or dim < 1 or not isinstance(done, int) or not 0 <= done <= self.key.total:
            return f"header has dim {dim!r} and done {done!r}"
        data = self.work_dir / DATA_NAME
        size = data.stat().st_size if data.exists() else -1
        if size != self.key.total * dim * 4:
            return f"{DATA_NAME} holds {size} bytes, {self.key.total * dim * 4} expected"
        return ""

    # ------------------------------------------------------------------ filling

    def _allocate(self, dim: int) -> np.ndarray:
        shape = (self.key.total, dim)
        nbytes = self.key.total * dim * 4
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            data = self.work_dir / DATA_NAME
            with open(data, "wb") as f:
                f.truncate(nbytes)  # sparse: pages are written as tiles are done
            fsync_dir(self.work_dir)
            return np.memmap(data, np.float32, "r+", shape=shape)
        if nbytes <= self.budget_bytes:
            return np.empty(shape, np.float32)
        self._temp = tempfile.TemporaryDirectory(prefix="embeddings-")
        logger.info("job %s: %d MB of tile embeddings go to a disk-backed array", self.key.job_id, nbytes >> 20)
        return np.memmap(Path(self._temp.name) / DATA_NAME, np.float32, "w+", shape=shape)

    def write(self, first: int, rows: np.ndarray) -> None:
        """Store the embeddings of tiles ``first .. first + len(rows) - 1``."""
        if self._array is None:
            self._array = self._allocate(int(rows.shape[1]))
        if rows.shape[1] != self._array.shape[1]:
            raise ValueError(f"embedding width {rows.shape[1]} differs from the saved {self._array.shape[1]}")
        self._array[first : first + rows.shape[0]] = rows

    def checkpoint(self, done: int) -> None:
        """Make tiles ``0 .. done - 1`` durable (data fsync'd before the header names them)."""
        if self.work_dir is None or self._array is None or done <= self.done:
            return
        assert isinstance(self._array, np.memmap)
        self._array.flush()  # msync: the mapped pages reach the file
        with open(self.work_dir / DATA_NAME, "rb+") as f:
            os.fsync(f.fileno())
        header = {"format": FORMAT, **asdict(self.key), "dim": int(self._array.shape[1]), "done": int(done),
                  "dtype": "float32"}
        atomic_write(self.work_dir / HEADER_NAME, json.dumps(header, sort_keys=True).encode("utf-8"))
        self.done = done

    @property
    def array(self) -> np.ndarray:
        """All embeddings (a memmap when disk-backed); complete once every tile was written."""
        if self._array is None:
            raise ValueError(f"job {self.key.job_id}: no tile embedding was stored")
        return self._array

    # ------------------------------------------------------------------ cleanup

    def close(self) -> None:
        """Drop the mapping (saved files stay for a later resume)."""
        self._array = None
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None

    def discard(self) -> None:
        """Remove the saved embeddings (the job finished, failed for good, or they no longer match)."""
        self.close()
        self.done = 0
        if self.work_dir is not None and self.work_dir.exists():
            shutil.rmtree(self.work_dir, ignore_errors=True)
