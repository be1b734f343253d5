"""Typed model cards: one class per task, checked when a bundle is verified.

The model card is the part of an engine bundle's manifest that says how to feed
the model and how to read what it returns (shared/DESIGN.md, "Engines"). Each
task the appliance runs has its class here, in the style of highdicom's typed
constructors: :func:`card_from_dict` (called by
:meth:`engines.manifest.Manifest.from_dict`, so on ``verify``, ``install`` and
every load) reads every key the appliance uses, checks it and raises
:class:`~engines.errors.BundleRejected` naming the key and what would be valid.
A bad card is therefore refused at install, never found when a job runs, and a
pipeline reads typed attributes (``card.threshold``), not free keys.

Keys the appliance does not read (``description``, ``notice``, ``architecture``,
``codes``...) are kept in ``extra`` and written back by :meth:`ModelCard.to_dict`,
so a card round-trips: ``card_from_dict(task, card.to_dict()) == card``. A key
one letter-slip away from a key of the card's class (``treshold``) is refused
rather than kept. A task without a class here gets the base :class:`ModelCard`.

Optional keys and their documented defaults are the dataclass fields' defaults
below; a key whose value changes a result (``threshold``, ``mean``, ``std``,
``grid``...) has none and must be stated.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from engines._card_values import count, fail, flag, listof, number, numbers, pattern, text, texts, times

__all__ = [
    "BAG_POOLING_HEADS",
    "BREAST_MRI_CLINICAL_VARIABLES",
    "BagPooling",
    "BreastMriCard",
    "CARD_CLASSES",
    "DEFAULT_PHASE_TOLERANCE_S",
    "DTYPES",
    "ModelCard",
    "PathologySlideCard",
    "PathologyTileCard",
    "TensorSpec",
    "card_from_dict",
]

DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64", "bool")
#: heads of a chunk-scored aggregator (``bag_pooling.head``)
BAG_POOLING_HEADS = ("sigmoid", "identity")
#: the clinical variables a breast_mri card may name, in the published model's order
BREAST_MRI_CLINICAL_VARIABLES: tuple[str, ...] = ("age", "er", "her2", "ki67", "grade")
_CROPS = ("breast", "center")
#: how far a study phase may lie from a model phase time when the card does not say (seconds)
DEFAULT_PHASE_TOLERANCE_S = 30.0

C = TypeVar("C", bound="ModelCard")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict()  # type: ignore[attr-defined]
    return value


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model card: name, shape (int fixed, str dynamic), dtype; other keys kept."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_card(cls, entry: Any, where: str) -> TensorSpec:
        if not isinstance(entry, dict):
            raise fail(f"model_card.{where} entries must be objects, got {entry!r}")
        name, shape, dtype = entry.get("name"), entry.get("shape"), entry.get("dtype")
        if not isinstance(name, str) or not name:
            raise fail(f"model_card.{where} entry has no 'name': {entry!r}")
        if not isinstance(shape, list) or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d > 0) or (isinstance(d, str) and d) for d in shape
        ):
            raise fail(f"model_card.{where} {name!r}: shape {shape!r} must be a list of positive ints or "
                       "dimension names")
        if dtype not in DTYPES:
            raise fail(f"model_card.{where} {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        extra = {k: v for k, v in entry.items() if k not in ("name", "shape", "dtype")}
        return cls(name=name, shape=tuple(shape), dtype=dtype, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def _tensors(card: Mapping[str, Any], where: str) -> tuple[TensorSpec, ...]:
    entries = card.get(where)
    if not isinstance(entries, list) or not entries:
        raise fail(f"model_card.{where} must be a non-empty list of {{name, shape, dtype}}")
    specs = tuple(TensorSpec.from_card(e, where) for e in entries)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise fail(f"model_card.{where} repeats a name: {names}")
    return specs


def _need(card: ModelCard, kind: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """The tensors the task's pipeline feeds and reads must be on the card."""
    for where, want, have in (("inputs", inputs, card.input_names), ("outputs", outputs, card.output_names)):
        missing = [n for n in want if n not in have]
        if missing:
            raise fail(f"a {kind} model_card.{where} must include {', '.join(map(repr, missing))}; "
                       f"it lists {', '.join(map(repr, have))}")


# ---------------------------------------------------------------------------------------------- the cards
@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What every card has: the model's inputs and outputs, an optional display name, and free keys."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    name: str | None = None  #: display name in reports; the task's name when absent
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    task: ClassVar[str] = ""
    #: card key -> reader of its JSON value (the value as the dataclass field holds it)
    _readers: ClassVar[dict[str, Callable[[Any, str], Any]]] = {"name": text}

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    @classmethod
    def from_dict(cls: type[C], data: Any) -> C:
        """Build the card from its JSON object; :class:`BundleRejected` names the first bad key."""
        if not isinstance(data, dict):
            raise fail("model_card must be an object")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {"inputs": _tensors(data, "inputs"), "outputs": _tensors(data, "outputs")}
        for key, read in cls._readers.items():
            if key in data:
                values[key] = read(data[key], key)
        cls._read_more(data, values)
        required = [f.name for f in dataclasses.fields(cls) if f.name not in values and f.name != "extra"
                    and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if required:
            raise fail(cls._missing_message(required))
        extra = {k: v for k, v in data.items() if k not in known}
        for key in extra:
            near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.85)
            if near:
                raise fail(f"model_card key {key!r} is not a key of a {cls.task or 'model'} card; "
                           f"did you mean {near[0]!r}?")
        return cls(**values, extra=extra)

    @classmethod
    def _read_more(cls, data: dict[str, Any], values: dict[str, Any]) -> None:
        """Keys whose check needs the inputs and outputs already read (none on the base card)."""

    @classmethod
    def _missing_message(cls, keys: list[str]) -> str:
        return f"a {cls.task} model card needs {', '.join(map(repr, keys))}; model_card lacks it"

    def to_dict(self) -> dict[str, Any]:
        """The card as a JSON object (what a bundle's manifest holds); parses back to an equal card."""
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("inputs", "outputs"):
                out[f.name] = [s.to_dict() for s in value]
            elif f.name != "extra" and value is not None:
                out[f.name] = _jsonable(value)
        return out


@dataclass(frozen=True)
class BagPooling:
    """An attention-pooled aggregator scored in chunks: score = head(sum softmax(logits) * values) over the bag."""

    attention_logits: str  #: output holding one attention logit per tile
    tile_values: str  #: output holding one value per tile
    head: str  #: one of :data:`BAG_POOLING_HEADS`

    @classmethod
    def from_card(cls, value: Any, outputs: set[str] | tuple[str, ...]) -> BagPooling:
        if not (isinstance(value, dict) and set(value) == {"attention_logits", "tile_values", "head"}):
            raise fail(f"model_card.bag_pooling {value!r} must be an object with exactly attention_logits, "
                       "tile_values, head")
        for key in ("attention_logits", "tile_values"):
            if value[key] not in outputs:
                raise fail(f"model_card.bag_pooling.{key} {value[key]!r} is not one of the outputs {sorted(outputs)}")
        if value["head"] not in BAG_POOLING_HEADS:
            raise fail(f"model_card.bag_pooling.head {value['head']!r} is not one of {', '.join(BAG_POOLING_HEADS)}")
        return cls(value["attention_logits"], value["tile_values"], value["head"])

    def to_dict(self) -> dict[str, Any]:
        return {"attention_logits": self.attention_logits, "tile_values": self.tile_values, "head": self.head}


@dataclass(frozen=True, kw_only=True)
class PathologyTileCard(ModelCard):
    """A tile encoder: RGB tile ``image`` [N, 3, S, S], normalized ``(x / 255 - mean) / std``, to ``embedding``."""

    mean: tuple[float, ...]  #: per RGB channel, on a 0..1 scale
    std: tuple[float, ...]  #: per RGB channel, each > 0
    tile_size: int | None = None  #: input side in pixels; absent: the operator's ``pathology.tile_size``
    mpp: float | None = None  #: microns per pixel it was trained at; absent: the operator's ``pathology.mpp``
    optical_path: str | None = None  #: Optical Path Identifier to read; absent: the operator's, else the first
    embed_dim: int | None = None  #: width of ``embedding``
    encoder: str | None = None  #: ViT preset name (site foundation models)
    embedding_size: int | None = None  #: ViT embedding width
    readout: str | None = None  #: ViT read-out ("cls", "mean", ...)

    task: ClassVar[str] = "pathology_tile"
    _readers: ClassVar[dict[str, Callable[[Any, str], Any]]] = {
        **ModelCard._readers,
        "mean": lambda v, k: numbers(v, k, 3, positive=False),
        "std": lambda v, k: numbers(v, k, 3, positive=True),
        "tile_size": count,
        "mpp": lambda v, k: number(v, k, above=0.0),
        "optical_path": text,
        "embed_dim": count,
        "encoder": text,
        "embedding_size": count,
        "readout": text,
    }

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise fail(f"a pathology_tile card needs mean and std of 3 channels (std > 0), got {self.mean}, {self.std}")
        _need(self, "pathology_tile", ("image",), ("embedding",))

    @classmethod
    def _missing_message(cls, keys: list[str]) -> str:
        return f"a pathology_tile model card needs {', '.join(map(repr, keys))} (the input normalization)"


@dataclass(frozen=True, kw_only=True)
class PathologySlideCard(ModelCard):
    """A slide aggregator: ``embeddings`` [N, D] to ``probability`` (and ``tile_scores``), at ``threshold``."""

    threshold: float  #: operating point in [0, 1]
    labels: tuple[str, ...] = ()  #: [negative, positive] display labels
    bag_pooling: BagPooling | None = None  #: declared when a bag may be scored in chunks

    task: ClassVar[str] = "pathology_slide"
    _readers: ClassVar[dict[str, Callable[[Any, str], Any]]] = {
        **ModelCard._readers,
        "threshold": lambda v, k: number(v, k, 0.0, 1.0),
        "labels": texts,
    }

    @classmethod
    def _read_more(cls, data: dict[str, Any], values: dict[str, Any]) -> None:
        if "bag_pooling" in data:
            outputs = tuple(s.name for s in values["outputs"])
            values["bag_pooling"] = BagPooling.from_card(data["bag_pooling"], outputs)

    @classmethod
    def _missing_message(cls, keys: list[str]) -> str:
        return f"a pathology_slide model card needs {', '.join(map(repr, keys))} (its operating point in [0, 1])"

    def __post_init__(self) -> None:
        number(self.threshold, "threshold", 0.0, 1.0)
        _need(self, "pathology_slide", ("embeddings",), ("probability",) if self.bag_pooling else
              ("probability", "tile_scores"))


def _clinical(value: Any, key: str) -> str:
    name = value.get("name") if isinstance(value, dict) else value
    return text(name, key, BREAST_MRI_CLINICAL_VARIABLES)


@dataclass(frozen=True, kw_only=True)
class BreastMriCard(ModelCard):
    """A 4-D DCE-MRI model: ``dce`` [N, phases, z, y, x] and ``clinical`` to ``probability``, at ``threshold``.

    A card with ``post_contrast_times_s`` has the study's phases mapped onto those
    times after injection; an older card with only ``phase_count`` needs exactly
    that many phases.
    """

    threshold: float  #: operating point in [0, 1]
    phase_count: int  #: phases of ``dce``, >= 2
    grid: tuple[int, ...]  #: (z, y, x) voxels of ``dce``
    spacing_mm: tuple[float, ...]  #: (z, y, x) voxel spacing the model was trained at
    crop: str = "breast"  #: "breast": centred on the breast mask; "center": on the volume
    post_contrast_times_s: tuple[float, ...] | None = None  #: increasing seconds after injection
    phase_tolerance_s: float = DEFAULT_PHASE_TOLERANCE_S  #: how far a study phase may lie from a model time
    max_interpolation_gap_s: float = 0.0  #: longest interpolation interval; 0: twice the longest step
    phase_rules: tuple[str, ...] | None = None  #: one Series Description regex per phase, in order
    philips_scale_slope: bool = False  #: apply Philips' private Scale Slope
    derived_series: str | None = None  #: regex of derived Series Descriptions; absent: the appliance's own
    clinical_variables: tuple[str, ...] = BREAST_MRI_CLINICAL_VARIABLES  #: order of the ``clinical`` vector
    kinetics: bool = True  #: report the lesion's kinetic curve type

    task: ClassVar[str] = "breast_mri"
    _readers: ClassVar[dict[str, Callable[[Any, str], Any]]] = {
        **ModelCard._readers,
        "threshold": lambda v, k: number(v, k, 0.0, 1.0),
        "phase_count": lambda v, k: count(v, k, 2),
        "grid": lambda v, k: tuple(count(x, f"{k}[{i}]") for i, x in enumerate(listof(v, k, 3))),
        "spacing_mm": lambda v, k: numbers(v, k, 3, positive=True),
        "crop": lambda v, k: text(v, k, _CROPS),
        "post_contrast_times_s": times,
        "phase_tolerance_s": lambda v, k: number(v, k, 0.0),
        "max_interpolation_gap_s": lambda v, k: number(v, k, 0.0),
        "phase_rules": lambda v, k: texts(v, k, pattern),
        "philips_scale_slope": flag,
        "derived_series": pattern,
        "clinical_variables": lambda v, k: texts(v, k, _clinical),
        "kinetics": flag,
    }

    @classmethod
    def _missing_message(cls, keys: list[str]) -> str:
        return (f"breast_mri model card needs phase_count, grid [z, y, x] and spacing_mm [z, y, x] and a threshold; "
                f"model_card lacks {', '.join(map(repr, keys))}")

    def __post_init__(self) -> None:
        times = self.post_contrast_times_s
        if times is not None and self.phase_count != 1 + len(times):
            raise fail(f"model_card.phase_count {self.phase_count} must be 1 + the {len(times)} post_contrast_times_s "
                       "(a pre-contrast phase, then those)")
        _need(self, "breast_mri", ("dce", "clinical"), ("probability",))
        dce = self.input("dce")
        if dce is not None and len(dce.shape) == 5:
            fixed = [(w, h) for w, h in zip((self.phase_count, *self.grid), dce.shape[1:]) if isinstance(h, int)]
            if any(w != h for w, h in fixed):
                raise fail(f"model_card.inputs 'dce' shape {list(dce.shape)} does not match phase_count "
                           f"{self.phase_count} and grid {list(self.grid)}")


#: task -> its card class; any other task gets :class:`ModelCard`
CARD_CLASSES: dict[str, type[ModelCard]] = {
    cls.task: cls for cls in (PathologyTileCard, PathologySlideCard, BreastMriCard)
}


def card_from_dict(task: str, data: Any) -> ModelCard:
    """The typed card of ``task`` from its JSON object (BundleRejected naming the key when it is wrong)."""
    return CARD_CLASSES.get(task, ModelCard).from_dict(data)
