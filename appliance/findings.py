"""What a pipeline hands to the report builder: findings, not DICOM.

The pathology and breast-MRI pipelines produce a :class:`StudyResult`; the
report builder (``appliance/reports``) turns it into a TID 1500 SR and, for
pathology, a heat-map object. Nothing here knows DICOM encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from appliance.errors import JobFailed
from engines.cards import ModelCard

Pipeline = Literal["pathology", "breast_mri"]
KineticCurve = Literal["persistent", "plateau", "washout"]
C = TypeVar("C", bound=ModelCard)


@dataclass(frozen=True)
class EngineIdentity:
    """Which engine produced a finding (IHE AI Results: algorithm name and version)."""

    task: str  #: e.g. "pathology_slide", "breast_mri"
    version: str  #: the bundle's version
    name: str  #: human-readable algorithm name
    manufacturer: str  #: who built the engine (the bundle's vendor)
    precision: str  #: fp32 | fp16 | int8
    manifest_sha256: str  #: identifies this exact bundle; the Device UID derives from it
    demo: bool = False  #: True for the project's demo models: "not for clinical use"

    @classmethod
    def of(cls, manifest: Any) -> EngineIdentity:
        """The identity of the engine whose (``engines.manifest.Manifest``-like) manifest this is."""
        m = manifest
        return cls(task=str(m.task), version=str(m.version), name=m.card.name or str(m.task),
                   manufacturer=str(m.vendor), precision=str(m.precision), manifest_sha256=str(m.sha256),
                   demo=bool(m.demo))


def task_card(manifest: Any, kind: type[C]) -> C:
    """The engine's typed model card, which must be a ``kind`` (the registry activates engines by task)."""
    card = manifest.card
    if not isinstance(card, kind):
        raise JobFailed(f"engine {manifest.task}/{manifest.version} has a {type(card).__name__}; "
                        f"this pipeline needs a {kind.__name__} ({kind.task} engine)")
    return card


@dataclass(frozen=True)
class SourceImage:
    """One source instance the finding was computed from."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path  #: the stored file in the spool (for copying patient/study attributes)


@dataclass(frozen=True)
class HeatMap:
    """Per-tile scores over one pyramid level of a slide, row-major, in [0, 1].

    ``scores[r, c]`` covers the level's pixels
    ``[r*tile_px, (r+1)*tile_px) x [c*tile_px, (c+1)*tile_px)``; NaN where no tissue tile was scored.
    """

    scores: np.ndarray  #: float32, shape (rows, cols)
    tile_px: int  #: tile size in the level's pixels
    level_source: SourceImage  #: the pyramid level instance the grid is laid over
    level_rows: int  #: total pixel matrix rows of that level
    level_columns: int  #: total pixel matrix columns of that level
    pixel_spacing_mm: tuple[float, float]  #: (row, column) spacing of that level


@dataclass(frozen=True)
class TileHit:
    """One of the top-k tiles: its top-left corner in the level's pixels and its score."""

    x: int
    y: int
    score: float


@dataclass(frozen=True)
class Finding:
    """One result: a probability, the class at the engine's operating threshold, and its evidence."""

    pipeline: Pipeline
    probability: float
    threshold: float
    engine: EngineIdentity
    sources: tuple[SourceImage, ...]
    heat_map: HeatMap | None = None
    top_tiles: tuple[TileHit, ...] = ()
    kinetic_curve: KineticCurve | None = None
    tiles_scored: int = 0
    phases: tuple[str, ...] = ()  #: breast MRI: each model phase and the study phases (and times) it was made from

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must lie in [0, 1], got {self.probability}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if not self.sources:
            raise ValueError("a finding needs at least one source image")

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True)
class StudyResult:
    """Everything one job found in one study (or slide series)."""

    job_id: str  #: opaque id; the only name for the study in logs
    study_uid: str
    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
