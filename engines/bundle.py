"""Engine bundles: write, pack, stage and verify (shared/DESIGN.md, "Engines", invariant 5).

A bundle is a flat directory (or a ``.tar`` of it, optionally with one
top-level folder) holding ``manifest.json``, ``manifest.sig`` and exactly the
files the manifest lists. Verification checks, in order: the entries (count,
total size, regular files only: no links, devices, fifos or sparse members, no
absolute or ``..`` path), the signature over the canonical manifest bytes
against a trusted key (reading nothing but ``manifest.json`` and
``manifest.sig``), every manifest field, no missing or extra file, and the
sha256 of every file, checked as it is copied when a bundle is staged. Nothing
in a bundle (a TensorRT plan is executable code) is loaded before all of that
passed, and nothing but the two manifest files is written before the signature
verified.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engines._sources import MAX_BUNDLE_BYTES, MAX_MEMBERS, BundleSource, open_source
from engines.files import CHUNK, atomic_write, copy_stream, durable_file, fsync_dir, sha256_file
from engines.errors import BundleRejected, EngineError
from engines.manifest import (
    FILE_RE,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SIGNATURE_NAME,
    Manifest,
    canonical_bytes,
    parse_manifest_bytes,
)
from engines.signing import SIGNATURE_BYTES, sign, verify

__all__ = [
    "GOLDEN_NAME",
    "MAX_BUNDLE_BYTES",
    "MAX_MEMBERS",
    "VerifiedBundle",
    "open_bundle",
    "pack_bundle",
    "read_golden",
    "stage_bundle",
    "verify_bundle",
    "verify_directory",
    "write_bundle",
    "write_golden",
]

logger = logging.getLogger(__name__)

GOLDEN_NAME = "golden.npz"
MAX_GOLDEN_BYTES = 16 << 20


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle directory whose signature and hashes verified; ``signer`` names the trusted key."""

    root: Path
    manifest: Manifest
    signer: str


# --------------------------------------------------------------------------- writing


def write_golden(path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    """Write a golden set as ``.npz`` with arrays ``input.NAME`` and ``output.NAME``."""
    arrays = {f"input.{k}": np.asarray(v) for k, v in inputs.items()}
    arrays.update({f"output.{k}": np.asarray(v) for k, v in outputs.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write(path, buf.getvalue())


def read_golden(bundle: VerifiedBundle) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The golden inputs and expected outputs of a verified bundle."""
    path = bundle.root / bundle.manifest.golden["file"]
    if path.stat().st_size > MAX_GOLDEN_BYTES:
        raise BundleRejected(f"golden set {path.name!r} is larger than {MAX_GOLDEN_BYTES} bytes")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError) as exc:
        raise BundleRejected(f"golden set {path.name!r} is not a readable .npz: {exc}") from None
    inputs = {k[len("input."):]: v for k, v in arrays.items() if k.startswith("input.")}
    outputs = {k[len("output."):]: v for k, v in arrays.items() if k.startswith("output.")}
    want_in = {s.name for s in bundle.manifest.inputs}
    if set(inputs) != want_in or not outputs:
        raise BundleRejected(
            f"golden set has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"the model card needs inputs {sorted(want_in)} and at least one output"
        )
    return inputs, outputs


def _manifest_dict(fields: dict[str, Any], digests: dict[str, str]) -> dict[str, Any]:
    data = {k: v for k, v in fields.items() if k != "files"}
    data["format"] = FORMAT_VERSION
    data["files"] = digests
    if isinstance(data.get("backend"), str):
        data["backend"] = {"name": data["backend"]}
    if "model_file" not in data:
        models = sorted(n for n in digests if n.endswith((".onnx", ".plan", ".engine")))
        if len(models) != 1:
            raise EngineError(f"model_file not given and the files hold {len(models)} model files: {models}")
        data["model_file"] = models[0]
    data.setdefault("vendor", "unknown")
    data.setdefault("demo", False)
    data.setdefault("batch_sizes", [1, 64])
    data.setdefault("metrics", {})
    data.setdefault("created_at", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if isinstance(data.get("batch_sizes"), tuple):
        data["batch_sizes"] = list(data["batch_sizes"])
    return data


def write_bundle(
    out_dir: Path, manifest_fields: dict[str, Any], files: dict[str, Path], private_key_pem: bytes
) -> Path:
    """Write a signed bundle directory ``out_dir`` (created; must be absent or empty) and return it.

    ``files`` maps bundle file names to source paths (copied in). ``manifest_fields``
    holds every manifest field but ``format`` and ``files`` (filled in here); ``backend``
    may be a plain name; ``model_file`` defaults to the single ``.onnx``/``.plan`` file;
    ``golden`` may be ``{"inputs": {...}, "outputs": {...}, "atol": .., "rtol": ..}`` with
    arrays, then it is written as ``golden.npz``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise EngineError(f"bundle directory {str(out_dir)!r} is not empty")
    fields = dict(manifest_fields)
    digests: dict[str, str] = {}
    for name, src in files.items():
        if not FILE_RE.match(name) or name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise EngineError(f"bundle file name {name!r} must match {FILE_RE.pattern} and not be the manifest")
        with open(src, "rb") as stream:
            digests[name] = copy_stream(stream, out_dir / name)
    golden = fields.get("golden")
    if isinstance(golden, dict) and "inputs" in golden:
        write_golden(out_dir / GOLDEN_NAME, golden["inputs"], golden["outputs"])
        digests[GOLDEN_NAME] = sha256_file(out_dir / GOLDEN_NAME)
        fields["golden"] = {"file": GOLDEN_NAME, "atol": float(golden.get("atol", 1e-4)),
                            "rtol": float(golden.get("rtol", 1e-3))}
    data = _manifest_dict(fields, digests)
    manifest = Manifest.from_dict(data)  # refuse to sign what a verifier would refuse
    signature = sign(private_key_pem, canonical_bytes(data))
    atomic_write(out_dir / SIGNATURE_NAME, signature)
    atomic_write(out_dir / MANIFEST_NAME, (manifest_pretty(data)).encode("utf-8"))
    fsync_dir(out_dir)
    logger.info("wrote bundle %s to %s", manifest.key, out_dir)
    return out_dir


def manifest_pretty(data: dict[str, Any]) -> str:
    """Human-readable manifest.json text (the signature covers the canonical form, not this)."""
    import json

    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def pack_bundle(bundle_dir: Path, tar_path: Path) -> Path:
    """Write ``bundle_dir`` as an uncompressed tar of regular files (flat), atomically."""
    tar_path = Path(tar_path)
    with durable_file(tar_path) as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(Path(bundle_dir).iterdir()):
            info = tar.gettarinfo(str(path), arcname=path.name)
            if not info.isfile():
                raise EngineError(f"bundle entry {path.name!r} is not a regular file")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as src:
                tar.addfile(info, src)
    return tar_path


# --------------------------------------------------------------------------- staging and verifying


def _signed_manifest(source: BundleSource, trusted_keys_dir: Path) -> tuple[Manifest, str, bytes, bytes]:
    """Read only ``manifest.json`` and ``manifest.sig`` (size-capped), verify; (manifest, signer, bytes, sig)."""
    limits = {MANIFEST_NAME: MAX_MANIFEST_BYTES, SIGNATURE_NAME: SIGNATURE_BYTES}
    raw: dict[str, bytes] = {}
    for name, limit in limits.items():
        if name not in source.sizes:
            raise BundleRejected(f"{source.description} has no {name}")
        if source.sizes[name] > limit:
            raise BundleRejected(f"{name} of {source.description} is {source.sizes[name]} bytes; at most {limit}")
        with source.open(name) as stream:
            raw[name] = stream.read(limit + 1)
    data = parse_manifest_bytes(raw[MANIFEST_NAME])
    signer = verify(canonical_bytes(data), raw[SIGNATURE_NAME], trusted_keys_dir)
    manifest = Manifest.from_dict(data)
    listed = set(manifest.files)
    missing = sorted(listed - set(source.sizes))
    if missing:
        raise BundleRejected(f"bundle {manifest.key} is missing file(s) listed in its manifest: {', '.join(missing)}")
    extra = len(set(source.sizes) - listed - set(limits)) + source.others
    if extra:
        raise BundleRejected(f"bundle {manifest.key} has {extra} entr{'y' if extra == 1 else 'ies'} its manifest "
                             "does not list (a bundle holds exactly the listed regular files)")
    return manifest, signer, raw[MANIFEST_NAME], raw[SIGNATURE_NAME]


def _hash_mismatch(manifest: Manifest, name: str, expected: str, actual: str) -> BundleRejected:
    return BundleRejected(
        f"sha256 of {name!r} in bundle {manifest.key} does not match the manifest "
        f"(manifest {expected[:12]}…, file {actual[:12]}…): the file was changed or corrupted"
    )


def stage_bundle(src: Path, dest: Path, trusted_keys_dir: Path) -> VerifiedBundle:
    """Verify a bundle directory or tar while copying it into the new directory ``dest``.

    Before anything is written: the source's entries are checked (count, total
    size, only regular files: no links, devices, fifos, sparse members, absolute
    or ``..`` paths), then ``manifest.json`` and ``manifest.sig`` alone are read
    and verified against the trusted keys. Only then are the files the signed
    manifest lists copied, each with ``O_EXCL`` and fsync, and its sha256 checked
    as it is written. On a refusal the caller removes ``dest``.
    """
    dest = Path(dest)
    with open_source(Path(src)) as source:
        manifest, signer, manifest_bytes, signature = _signed_manifest(source, trusted_keys_dir)
        dest.mkdir(parents=True)
        copy_stream(io.BytesIO(manifest_bytes), dest / MANIFEST_NAME)
        copy_stream(io.BytesIO(signature), dest / SIGNATURE_NAME)
        for name, expected in sorted(manifest.files.items()):
            with source.open(name) as stream:
                actual = copy_stream(stream, dest / name)
            if actual != expected:
                raise _hash_mismatch(manifest, name, expected, actual)
    fsync_dir(dest)
    return VerifiedBundle(root=dest, manifest=manifest, signer=signer)


def verify_directory(root: Path, trusted_keys_dir: Path) -> VerifiedBundle:
    """Verify a flat bundle directory in place: signature first, then the exact file set, then every sha256."""
    root = Path(root)
    if not root.is_dir():
        raise BundleRejected(f"{str(root)!r} is not a bundle directory")
    with open_source(root) as source:
        manifest, signer, _, _ = _signed_manifest(source, trusted_keys_dir)
        for name, expected in sorted(manifest.files.items()):
            digest = hashlib.sha256()
            with source.open(name) as stream:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
            actual = digest.hexdigest()
            if actual != expected:
                raise _hash_mismatch(manifest, name, expected, actual)
    return VerifiedBundle(root=root, manifest=manifest, signer=signer)


@contextmanager
def open_bundle(path: Path, trusted_keys_dir: Path) -> Iterator[VerifiedBundle]:
    """Verify a bundle directory in place, or a tar while extracting it to a temporary directory."""
    path = Path(path)
    if path.is_dir():
        yield verify_directory(path, trusted_keys_dir)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bundle-"))
    try:
        yield stage_bundle(path, tmp / "b", trusted_keys_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_bundle(path: Path, trusted_keys_dir: Path) -> Manifest:
    """Verify a bundle (directory or tar) and return its manifest; raise BundleRejected naming the reason."""
    with open_bundle(path, trusted_keys_dir) as bundle:
        return bundle.manifest
