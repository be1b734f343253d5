"""The engine-bundle manifest: what a bundle is, checked field by field.

``manifest.json`` is a JSON object (shared/DESIGN.md, "Engines"). The
signature (``manifest.sig``, Ed25519) covers :func:`canonical_bytes` of it:
keys sorted, no insignificant whitespace, UTF-8. A verifier parses the file,
re-serialises it canonically and checks the signature over those bytes, so what
is used is exactly what was signed.

Fields (all required unless a default is given)::

    format        1
    task          "pathology_tile" | "pathology_slide" | "breast_mri" | ...  ([a-z][a-z0-9_]*)
    version       "1.0.0"                      ([0-9A-Za-z][0-9A-Za-z._+-]*)
    vendor        "who signed it"              (default "unknown")
    demo          true for synthetic demo engines (default false)
    precision     "fp32" | "fp16" | "int8"
    backend       {"name": "onnxruntime", "min_version": "1.17"}
                  {"name": "tensorrt", "trt_version": "10.3.0", "compute_capability": "8.9", ...}
                  {"name": "triton", "model_name": "...", "url": "http://..."}
    model_file    the primary model file (a key of ``files``)
    model_card    {"inputs": [{"name", "shape", "dtype", ...}], "outputs": [...], ...}
                  shape entries are positive ints (fixed) or strings (dynamic, e.g. "N");
                  typed per task and checked key by key by :mod:`engines.cards`
                  (pathology_tile, pathology_slide, breast_mri; other tasks: inputs and outputs)
    batch_sizes   [min, max] accepted on the first (dynamic) input dimension (default [1, 64])
    golden        {"file": "golden.npz", "atol": 1e-4, "rtol": 1e-3}
                  npz arrays "input.NAME" and "output.NAME"
    files         {"name": "sha256 hex"} of every file besides manifest.json and manifest.sig
    metrics       validation metrics measured at export (default {})
    created_at    ISO 8601 UTC (default "")
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from engines.cards import ModelCard, TensorSpec, card_from_dict
from engines.errors import BundleRejected

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "PRECISIONS",
    "SIGNATURE_NAME",
    "TensorSpec",
    "Manifest",
    "canonical_bytes",
    "parse_manifest_bytes",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("onnxruntime", "tensorrt", "triton")
MAX_MANIFEST_BYTES = 1 << 20

TASK_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

_REQUIRED = ("format", "task", "version", "precision", "backend", "model_file", "model_card", "golden", "files")
_OPTIONAL: dict[str, Any] = {
    "vendor": "unknown",
    "demo": False,
    "batch_sizes": [1, 64],
    "metrics": {},
    "created_at": "",
}
FIELDS = _REQUIRED + tuple(_OPTIONAL)


def canonical_bytes(data: dict[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, compact separators, UTF-8, no NaN."""
    try:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise BundleRejected(f"manifest is not representable as canonical JSON: {exc}") from None
    return text.encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise BundleRejected(f"manifest repeats the key(s) {', '.join(map(repr, dupes))}")
    return dict(pairs)


def parse_manifest_bytes(raw: bytes) -> dict[str, Any]:
    """Parse ``manifest.json`` bytes into a dict (no field checks yet: verify the signature first)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleRejected(f"manifest is {len(raw)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleRejected(f"manifest is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleRejected(f"manifest must be a JSON object, got {type(data).__name__}")
    return data


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise BundleRejected(message)


@dataclass(frozen=True)
class Manifest:
    """A checked manifest. ``sha256`` is the hash of its canonical bytes (what was signed)."""

    task: str
    version: str
    vendor: str
    demo: bool
    precision: str
    backend: dict[str, Any]
    model_file: str
    model_card: dict[str, Any]  #: the card as signed (for writing it out); read values from ``card``
    batch_sizes: tuple[int, int]
    golden: dict[str, Any]
    files: dict[str, str]
    metrics: dict[str, Any]
    created_at: str
    sha256: str
    inputs: tuple[TensorSpec, ...] = field(repr=False)
    outputs: tuple[TensorSpec, ...] = field(repr=False)
    raw: dict[str, Any] = field(repr=False, compare=False)
    card: ModelCard = field(repr=False, compare=False)  #: the typed card of ``task`` (:mod:`engines.cards`)

    @property
    def backend_name(self) -> str:
        return str(self.backend["name"])

    @property
    def key(self) -> str:
        """``TASK/VERSION``, how the registry names it."""
        return f"{self.task}/{self.version}"

    def canonical_bytes(self) -> bytes:
        return canonical_bytes(self.raw)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Check every field; raise :class:`BundleRejected` naming the bad field and what is valid."""
        missing = [k for k in _REQUIRED if k not in data]
        _require(not missing, f"manifest lacks required field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - set(FIELDS))
        _require(not unknown, f"manifest has unknown field(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
        d = {**_OPTIONAL, **data}
        _require(d["format"] == FORMAT_VERSION, f"manifest format {d['format']!r} is not {FORMAT_VERSION}")
        _require(isinstance(d["task"], str) and bool(TASK_RE.match(d["task"])),
                 f"task {d['task']!r} must match {TASK_RE.pattern}")
        _require(isinstance(d["version"], str) and bool(VERSION_RE.match(d["version"])),
                 f"version {d['version']!r} must match {VERSION_RE.pattern}")
        _require(isinstance(d["vendor"], str), f"vendor {d['vendor']!r} must be a string")
        _require(isinstance(d["demo"], bool), f"demo {d['demo']!r} must be true or false")
        _require(d["precision"] in PRECISIONS, f"precision {d['precision']!r} is not one of {', '.join(PRECISIONS)}")
        backend = d["backend"]
        _require(isinstance(backend, dict) and backend.get("name") in BACKENDS,
                 f"backend {backend!r} must be an object whose 'name' is one of {', '.join(BACKENDS)}")
        files = d["files"]
        _require(isinstance(files, dict) and bool(files), "files must be a non-empty object of name -> sha256")
        for name, digest in files.items():
            _require(bool(FILE_RE.match(name)) and name not in (MANIFEST_NAME, SIGNATURE_NAME),
                     f"file name {name!r} must match {FILE_RE.pattern} (flat, no path) and not be the manifest")
            _require(isinstance(digest, str) and bool(SHA256_RE.match(digest)),
                     f"sha256 of {name!r} must be 64 lowercase hex digits, got {digest!r}")
        _require(d["model_file"] in files, f"model_file {d['model_file']!r} is not one of the files {sorted(files)}")
        card = card_from_dict(d["task"], d["model_card"])
        bs = d["batch_sizes"]
        _require(isinstance(bs, list) and len(bs) == 2 and all(isinstance(b, int) and not isinstance(b, bool) for b in bs)
                 and 1 <= bs[0] <= bs[1], f"batch_sizes {bs!r} must be [min, max] with 1 <= min <= max")
        golden = d["golden"]
        _require(isinstance(golden, dict) and golden.get("file") in files,
                 f"golden {golden!r} must be an object whose 'file' is one of the bundle's files")
        for tol in ("atol", "rtol"):
            value = golden.get(tol, 0.0)
            _require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                     f"golden.{tol} {value!r} must be a number >= 0")
        _require(isinstance(d["metrics"], dict), f"metrics {d['metrics']!r} must be an object")
        _require(isinstance(d["created_at"], str), f"created_at {d['created_at']!r} must be a string")
        return cls(
            task=d["task"], version=d["version"], vendor=d["vendor"], demo=d["demo"], precision=d["precision"],
            backend=dict(backend), model_file=d["model_file"], model_card=dict(d["model_card"]),
            batch_sizes=(bs[0], bs[1]), golden=dict(golden), files=dict(files), metrics=dict(d["metrics"]),
            created_at=d["created_at"], sha256=hashlib.sha256(canonical_bytes(data)).hexdigest(),
            inputs=card.inputs, outputs=card.outputs, raw=data, card=card,
        )
