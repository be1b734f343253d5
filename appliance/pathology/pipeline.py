"""Whole-slide inference: regions -> tiles -> batches -> tile engine -> slide engine.

Memory is bounded by a few batches, never the slide: a reader thread
decodes one band of tiles at a time and hands finished batches through a
queue of ``queue_batches`` to the engine, so decoding overlaps inference.
The tile embeddings go to an :class:`EmbeddingStore` (in the job's work
directory, checkpointed at batch boundaries, so an interrupted job resumes
from its saved tiles; in memory up to ``memory_budget_mb`` otherwise). The
slide engine scores the bag in chunks (``_bag``); its attention and per-tile
scores become the heat map and the top-k tiles.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections import deque
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from appliance.errors import JobFailed
from appliance.findings import EngineIdentity, Finding, HeatMap, SourceImage, StudyResult, TileHit, task_card
from appliance.pathology._bag import score_bag
from appliance.pathology._embeddings import BagKey, EmbeddingStore, tiles_digest
from appliance.pathology._grid import TileGrid, make_grid
from appliance.pathology._levels import Level, SlideReader, nearest_level
from appliance.pathology._tissue import tissue_mask
from engines.cards import PathologySlideCard, PathologyTileCard
from engines.errors import EngineUnavailable

__all__ = ["PathologySettings", "run_slide", "run_dicom_series", "run_slide_file", "Progress", "EngineLike"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class EngineLike(Protocol):
    """What the pipeline needs of an engine (``engines.backends.Engine`` fits)."""

    manifest: Any

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class PathologySettings:
    """Tuning of the pathology pipeline; the defaults suit a laptop CPU.

    ``tile_size`` and ``mpp`` apply where the tile engine's model card does not say (what
    foundation models use: 224 px tiles at 0.5 um/px).
    """

    batch_size: int = 32  #: tiles per tile-engine call (capped by the engine's range)
    min_tissue: float = 0.25  #: share of a tile the tissue mask must cover to be scored
    top_k: int = 5  #: highest-scoring tiles reported
    region_tiles: int = 16  #: tiles read and decoded per region (one band of a grid row)
    mask_max_px: int = 2048  #: longest side of the tissue-detection image
    queue_batches: int = 3  #: batches decoded ahead of the engine
    read_threads: int = 1  #: frame-decoding threads of the DICOM reader
    tiler: str = "numpy"  #: "numpy" (reference) or "cuda" (engines.kernels.cuda)
    tile_size: int = 224  #: model input side in pixels, unless the model card says
    mpp: float = 0.5  #: microns per pixel the model was trained at, unless the model card says
    mpp_tolerance: float = 0.1  #: a finest level coarser than mpp * (1 + this) is refused, never upsampled
    memory_budget_mb: int = 512  #: tile embeddings beyond this go to a disk-backed array
    work_dir: Path | None = None  #: the job's work directory: embeddings saved here resume the job
    checkpoint_seconds: float = 0.5  #: at most this much encoding is lost when the job is interrupted
    bag_chunk: int = 16384  #: tiles per slide-engine call when the bag is scored in chunks
    optical_path: str = ""  #: Optical Path Identifier to read; "" the model card's, else the first


def _thumbnail(reader: SlideReader, max_px: int) -> tuple[np.ndarray, Level]:
    """A low-resolution RGB image of the whole slide, read in strips from a coarse level."""
    levels = sorted(reader.levels, key=lambda lv: lv.width * lv.height)
    level = next((lv for lv in levels if max(lv.width, lv.height) >= min(512, max_px)), levels[-1])
    f = max(1, math.ceil(max(level.width, level.height) / max_px))
    h, w = level.height // f, level.width // f
    if h == 0 or w == 0:
        raise JobFailed(f"slide level {level.width}x{level.height} is too small for tissue detection")
    out = np.empty((h, w, 3), np.uint8)
    strip = max(1, (16 << 20) // (w * f * f * 3))  # output rows per read: <= 16 MiB of level pixels
    for r in range(0, h, strip):
        rows = min(strip, h - r)
        region = reader.read_region(level.index, 0, r * f, w * f, rows * f)
        out[r : r + rows] = region.reshape(rows, f, w, f, 3).mean(axis=(1, 3), dtype=np.float32).astype(np.uint8)
    return out, level


def _bands(grid: TileGrid, region_tiles: int, start: int = 0) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(row, first col, last col, indices into the grid) of each region to read, from tile ``start`` on."""
    pos = grid.positions
    n = len(grid)
    while start < n:
        row = pos[start, 0]
        end = start + 1
        while (end < n and pos[end, 0] == row and pos[end, 1] - pos[end - 1, 1] <= 2
               and pos[end, 1] - pos[start, 1] < region_tiles):
            end += 1
        yield int(row), int(pos[start, 1]), int(pos[end - 1, 1]), np.arange(start, end)
        start = end


#: ``tiler(region, rects, out)``: writes each rectangle's model input into ``out`` (N, 3, S, S) float32.
Tiler = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def _make_tiler(settings: PathologySettings, size: int, mean: Sequence[float], std: Sequence[float]) -> Tiler:
    if settings.tiler == "cuda":
        from engines.kernels.cuda import CudaTiler

        cuda = CudaTiler(size, mean, std)
        return lambda region, rects, out: np.copyto(out, cuda.run(region, rects).images)
    if settings.tiler != "numpy":
        raise JobFailed(f"tiler must be 'numpy' or 'cuda', got {settings.tiler!r}")
    from engines.kernels.reference import tile_batch

    def numpy_tiler(region: np.ndarray, rects: np.ndarray, out: np.ndarray) -> None:
        tile_batch(region, rects, size, mean, std, out=out, measure_tissue=False)  # the grid chose the tiles

    return numpy_tiler


def _produce(reader: SlideReader, grid: TileGrid, tiler: Tiler,
             batch: int, size: int, settings: PathologySettings, out: "queue.Queue[Any]",
             stop: threading.Event, start: int = 0) -> None:
    """Reader thread: fill batches of tiles in grid order from tile ``start`` and queue them; errors too."""
    try:
        buf = np.empty((batch, 3, size, size), np.float32)
        fill, first = 0, start
        t = grid.tile_px
        for row, c0, c1, idx in _bands(grid, settings.region_tiles, start):
            if stop.is_set():
                return
            region = reader.read_region(grid.level.index, c0 * t, row * t, (c1 - c0 + 1) * t, t)
            rects = np.stack([(grid.positions[idx, 1] - c0) * t, np.zeros(len(idx), np.int64),
                              np.full(len(idx), t), np.full(len(idx), t)], axis=1)
            k = 0
            while k < len(idx):  # each tile is made straight into its place in the batch
                take = min(batch - fill, len(idx) - k)
                tiler(region, rects[k : k + take], buf[fill : fill + take])
                fill += take
                k += take
                if fill == batch:
                    out.put((first, buf))
                    buf = np.empty_like(buf)
                    first += fill
                    fill = 0
        if fill:
            out.put((first, buf[:fill]))
        out.put(None)
    except BaseException as exc:  # handed to the consumer, which raises it
        out.put(exc)


def _padded(engine: EngineLike, x: np.ndarray) -> np.ndarray:
    """``x`` padded with zeros up to the engine's smallest batch (a short last batch)."""
    sizes = getattr(engine, "batch_sizes", None)
    n = x.shape[0]
    if sizes is not None and n < sizes.start:
        x = np.concatenate([x, np.zeros((sizes.start - n,) + x.shape[1:], x.dtype)])
    return x


def _tile_batches(q: "queue.Queue[Any]", engine: EngineLike, sent: "deque[tuple[int, int]]"
                  ) -> Iterator[dict[str, np.ndarray]]:
    """The reader thread's batches as engine inputs, in order; ``sent`` records each batch's (first tile, count)."""
    while True:
        item = q.get()
        if item is None:
            return
        if isinstance(item, BaseException):
            if isinstance(item, JobFailed):
                raise item
            raise JobFailed(f"reading the slide failed: {item}") from item
        first, x = item
        sent.append((first, x.shape[0]))
        yield {"image": _padded(engine, x)}


def _infer_stream(engine: EngineLike, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Tile engine outputs of ``batches`` in order, several in flight where the backend can (Triton's pool)."""
    many = getattr(engine, "infer_many", None)
    results = many(batches) if many is not None else (engine.infer(b) for b in batches)
    while True:
        try:
            out = next(results)
        except StopIteration:
            return
        except (EngineUnavailable, JobFailed):
            raise  # an unreachable engine sends the job back to the queue; a reader failure is the slide's
        except Exception as exc:
            raise JobFailed(f"tile engine failed: {exc}") from exc
        yield out


def _plan(reader: SlideReader, tile_engine: EngineLike, settings: PathologySettings,
          job_id: str) -> tuple[TileGrid, int, float]:
    """The tile grid over the level nearest the model's mpp (never coarser), with the tile size and mpp."""
    card = task_card(tile_engine.manifest, PathologyTileCard)
    size = card.tile_size if card.tile_size is not None else settings.tile_size
    mpp = card.mpp if card.mpp is not None else settings.mpp
    level = nearest_level(reader.levels, mpp, settings.mpp_tolerance)
    thumb, mask_level = _thumbnail(reader, settings.mask_max_px)
    mask = tissue_mask(thumb, min_area=max(4, thumb.size // 3 // 20000))
    grid = make_grid(level, mask, mask_level, size, mpp, settings.min_tissue)
    if len(grid) == 0:
        raise JobFailed(
            f"no tissue found: none of the {grid.rows}x{grid.cols} tiles has {settings.min_tissue:.0%} tissue"
        )
    logger.info("job %s: %d tissue tiles of %dx%d at level %d (%.3f mpp)", job_id, len(grid), grid.rows,
                grid.cols, level.index, level.mpp)
    return grid, size, mpp


def _encode(reader: SlideReader, grid: TileGrid, tile_engine: EngineLike, store: EmbeddingStore, start: int,
            batch: int, size: int, settings: PathologySettings, job_id: str, progress: Progress | None) -> None:
    """Tiles ``start ..`` through the tile engine into ``store``, checkpointing at batch boundaries.

    Whatever stops the loop (the progress callback's JobInterrupted, a transient error) finds the
    tiles done so far saved before it propagates.
    """
    total = len(grid)
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, settings.queue_batches))
    stop = threading.Event()
    card = task_card(tile_engine.manifest, PathologyTileCard)
    tiler = _make_tiler(settings, size, card.mean, card.std)
    worker = threading.Thread(target=_produce, name=f"tiles-{job_id}", daemon=True,
                              args=(reader, grid, tiler, batch, size, settings, q, stop, start))
    worker.start()
    done, saved_at = start, time.monotonic()
    sent: deque[tuple[int, int]] = deque()
    try:
        for out in _infer_stream(tile_engine, _tile_batches(q, tile_engine, sent)):
            first, n = sent.popleft()
            store.write(first, out["embedding"][:n])
            done = first + n
            if time.monotonic() - saved_at >= settings.checkpoint_seconds:
                store.checkpoint(done)
                saved_at = time.monotonic()
            if progress is not None:
                progress(done, total)
        store.checkpoint(done)
    except JobFailed:
        raise
    except BaseException:
        store.checkpoint(done)  # the rows up to ``done`` are complete: a later run resumes there
        logger.info("job %s: stopped at tile %d of %d; %d saved", job_id, done, total, store.done)
        raise
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.05)
    if done != total:
        raise JobFailed(f"job {job_id}: the reader stopped after {done} of {total} tiles")


def _open_store(grid: TileGrid, tile_engine: EngineLike, size: int, mpp: float, batch: int, job_id: str,
                settings: PathologySettings) -> tuple[EmbeddingStore, int]:
    """The job's embedding store and the tile it resumes from (0: from the start)."""
    m = tile_engine.manifest
    digest = tiles_digest(grid.level.source.sop_instance_uid, grid.level.index, grid.tile_px, size, mpp,
                          grid.positions) + f":{batch}"
    key = BagKey(job_id, f"{m.task}/{m.version}", str(m.sha256), digest, len(grid))
    store = EmbeddingStore(key, settings.work_dir, settings.memory_budget_mb << 20)
    start = store.resume()
    if start:
        logger.info("job %s: resuming from tile %d of %d (saved tile embeddings)", job_id, start, len(grid))
    return store, start


def run_slide(reader: SlideReader, tile_engine: EngineLike, slide_engine: EngineLike, *, job_id: str,
              study_uid: str, sources: Sequence[SourceImage] = (), progress: Progress | None = None,
              settings: PathologySettings = PathologySettings()) -> StudyResult:
    """Score one opened slide; see the module docstring."""
    threshold = task_card(slide_engine.manifest, PathologySlideCard).threshold
    t0 = time.perf_counter()
    grid, size, mpp = _plan(reader, tile_engine, settings, job_id)
    level, total = grid.level, len(grid)
    sizes = getattr(tile_engine, "batch_sizes", None)
    batch = max(1, min(settings.batch_size, sizes.stop - 1 if sizes is not None else settings.batch_size))
    store, start = _open_store(grid, tile_engine, size, mpp, batch, job_id, settings)
    try:
        if progress is not None and start:
            progress(start, total)
        if start < total:
            _encode(reader, grid, tile_engine, store, start, batch, size, settings, job_id, progress)
        bag = score_bag(slide_engine, store.array, settings.bag_chunk)
    except JobFailed:
        store.discard()  # a permanent failure: nothing to resume
        raise
    finally:
        store.close()
    probability = float(np.clip(bag.probability, 0.0, 1.0))
    scores = bag.tile_scores
    heat = np.full((grid.rows, grid.cols), np.nan, np.float32)
    heat[grid.positions[:, 0], grid.positions[:, 1]] = scores
    xy = grid.xy()
    top = np.argsort(-scores, kind="stable")[: settings.top_k]
    hits = tuple(TileHit(int(xy[i, 0]), int(xy[i, 1]), float(scores[i])) for i in top)
    heat_map = HeatMap(heat, grid.tile_px, level.source, level.height, level.width, level.pixel_spacing_mm)
    finding = Finding(
        pipeline="pathology", probability=probability, threshold=threshold,
        engine=EngineIdentity.of(slide_engine.manifest), sources=tuple(sources) or (level.source,),
        heat_map=heat_map, top_tiles=hits, tiles_scored=total,
    )
    elapsed = time.perf_counter() - t0
    logger.info("job %s: %d tiles (%d encoded) in %.1f s", job_id, total, total - start, elapsed)
    store.discard()  # the result is made: the saved embeddings are no longer needed
    t = EngineIdentity.of(tile_engine.manifest)
    notes = (f"tile engine {t.task} {t.version}; level {level.index} at {level.mpp:.3f} um/px; "
             f"{total} tissue tiles of {grid.rows}x{grid.cols}",)
    return StudyResult(job_id=job_id, study_uid=study_uid, findings=(finding,), notes=notes)


def run_dicom_series(paths: Sequence[Path], tile_engine: EngineLike, slide_engine: EngineLike, *,
                     job_id: str, sources: Sequence[SourceImage] = (), progress: Progress | None = None,
                     settings: PathologySettings = PathologySettings()) -> StudyResult:
    """Score a DICOM WSI series stored by the node (all its instance files)."""
    from appliance.pathology._wsi import DicomSlide

    path = settings.optical_path or task_card(tile_engine.manifest, PathologyTileCard).optical_path or ""
    with DicomSlide(paths, sources, threads=settings.read_threads, optical_path=path) as slide:
        study = slide.levels[0].source.study_uid
        return run_slide(slide, tile_engine, slide_engine, job_id=job_id, study_uid=study,
                         sources=sources, progress=progress, settings=settings)


def run_slide_file(path: Path, tile_engine: EngineLike, slide_engine: EngineLike, *, job_id: str,
                   mpp: float | None = None, progress: Progress | None = None,
                   settings: PathologySettings = PathologySettings()) -> StudyResult:
    """Score a vendor-format slide file (SVS, NDPI, MRXS, tiled TIFF) through openslide."""
    from appliance.pathology._openslide import OpenSlideReader

    with OpenSlideReader(path, mpp) as slide:
        return run_slide(slide, tile_engine, slide_engine, job_id=job_id, study_uid="",
                         progress=progress, settings=settings)
