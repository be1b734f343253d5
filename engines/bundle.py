"""Engine bundles: write, pack, stage and verify (shared/DESIGN.md, "Engines", invariant 5).

A bundle is a flat directory (or a ``.tar`` of it, optionally with one
top-level folder) holding ``manifest.json``, ``manifest.sig`` and exactly the
files the manifest lists. Verification checks, in order: the file set is
regular files only, the signature over the canonical manifest bytes verifies
against a trusted key, every manifest field, no missing or extra file, and the
sha256 of every file. Nothing in a bundle (a TensorRT plan is executable code)
is loaded before all of that passed.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from engines.files import atomic_write, copy_stream, fsync_dir, sha256_file
from engines.errors import BundleRejected, EngineError
from engines.manifest import (
    FILE_RE,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    canonical_bytes,
    parse_manifest_bytes,
)
from engines.signing import sign, verify

__all__ = [
    "GOLDEN_NAME",
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
MAX_MEMBERS = 256
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
    tmp = tar_path.with_name(f".{tar_path.name}.tmp-{os.getpid()}")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(Path(bundle_dir).iterdir()):
            info = tar.gettarinfo(str(path), arcname=path.name)
            if not info.isfile():
                raise EngineError(f"bundle entry {path.name!r} is not a regular file")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as src:
                tar.addfile(info, src)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, tar_path)
    fsync_dir(tar_path.parent)
    return tar_path


# --------------------------------------------------------------------------- staging


def _tar_members(tar: tarfile.TarFile) -> list[tuple[str, tarfile.TarInfo]]:
    """Regular-file members with their flat names; refuse links, devices, traversal, nesting."""
    members = tar.getmembers()
    if len(members) > MAX_MEMBERS:
        raise BundleRejected(f"tar has {len(members)} members, more than {MAX_MEMBERS}")
    files: list[tuple[PurePosixPath, tarfile.TarInfo]] = []
    for m in members:
        path = PurePosixPath(m.name)
        if path.is_absolute() or ".." in path.parts:
            raise BundleRejected(f"tar member {m.name!r} escapes the bundle (absolute path or '..')")
        if m.isdir():
            continue
        if not m.isfile():
            raise BundleRejected(f"tar member {m.name!r} is a link or special file; only regular files are allowed")
        parts = [p for p in path.parts if p != "."]
        if not parts:
            raise BundleRejected(f"tar member {m.name!r} has no file name")
        files.append((PurePosixPath(*parts), m))
    tops = {p.parts[0] for p, _ in files if len(p.parts) == 2}
    flat: list[tuple[str, tarfile.TarInfo]] = []
    for path, m in files:
        if len(path.parts) == 2 and len(tops) == 1:
            name = path.parts[1]
        elif len(path.parts) == 1:
            name = path.parts[0]
        else:
            raise BundleRejected(f"tar member {m.name!r} is nested; a bundle is flat (one optional top folder)")
        if not FILE_RE.match(name):
            raise BundleRejected(f"tar member {m.name!r}: file name must match {FILE_RE.pattern}")
        flat.append((name, m))
    names = [n for n, _ in flat]
    if len(set(names)) != len(names):
        raise BundleRejected(f"tar repeats a file name: {sorted(names)}")
    if len(flat) != len(files) or (tops and any(len(p.parts) == 1 for p, _ in files)):
        raise BundleRejected("tar mixes files at the top level with files in a folder")
    return flat


def stage_bundle(src: Path, dest: Path) -> None:
    """Copy a bundle directory, or safely extract a bundle tar, into the empty directory ``dest``.

    Only regular files are taken (symlinks and special files are refused), each
    written with ``O_EXCL`` and fsync'd. Verify ``dest`` afterwards, not ``src``.
    """
    src, dest = Path(src), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        for entry in sorted(src.iterdir()):
            st = entry.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise BundleRejected(f"bundle entry {entry.name!r} is not a regular file (links and folders refused)")
            if not FILE_RE.match(entry.name):
                raise BundleRejected(f"bundle file name {entry.name!r} must match {FILE_RE.pattern}")
            with open(entry, "rb") as src_file:
                copy_stream(src_file, dest / entry.name)
    elif src.is_file():
        try:
            tar = tarfile.open(src, "r:*")
        except (tarfile.TarError, OSError) as exc:
            raise BundleRejected(f"{src.name!r} is neither a bundle directory nor a readable tar: {exc}") from None
        with tar:
            for name, member in _tar_members(tar):
                stream = tar.extractfile(member)
                if stream is None:
                    raise BundleRejected(f"tar member {member.name!r} has no data")
                with stream:
                    copy_stream(stream, dest / name)
    else:
        raise BundleRejected(f"bundle {str(src)!r} does not exist")
    fsync_dir(dest)


# --------------------------------------------------------------------------- verifying


def verify_directory(root: Path, trusted_keys_dir: Path) -> VerifiedBundle:
    """Verify a flat bundle directory in place: signature, fields, exact file set, every sha256."""
    root = Path(root)
    present: set[str] = set()
    for entry in root.iterdir():
        if not stat.S_ISREG(entry.lstat().st_mode):
            raise BundleRejected(f"bundle entry {entry.name!r} is not a regular file (links and folders refused)")
        present.add(entry.name)
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        if name not in present:
            raise BundleRejected(f"bundle has no {name}")
    data = parse_manifest_bytes((root / MANIFEST_NAME).read_bytes())
    signer = verify(canonical_bytes(data), (root / SIGNATURE_NAME).read_bytes(), trusted_keys_dir)
    manifest = Manifest.from_dict(data)
    listed = set(manifest.files)
    missing = sorted(listed - present)
    extra = sorted(present - listed - {MANIFEST_NAME, SIGNATURE_NAME})
    if missing:
        raise BundleRejected(f"bundle {manifest.key} is missing file(s) listed in its manifest: {', '.join(missing)}")
    if extra:
        raise BundleRejected(f"bundle {manifest.key} has file(s) its manifest does not list: {', '.join(extra)}")
    for name, expected in sorted(manifest.files.items()):
        actual = sha256_file(root / name)
        if actual != expected:
            raise BundleRejected(
                f"sha256 of {name!r} in bundle {manifest.key} does not match the manifest "
                f"(manifest {expected[:12]}…, file {actual[:12]}…): the file was changed or corrupted"
            )
    return VerifiedBundle(root=root, manifest=manifest, signer=signer)


@contextmanager
def open_bundle(path: Path, trusted_keys_dir: Path) -> Iterator[VerifiedBundle]:
    """Verify a bundle directory in place, or a tar after extracting it to a temporary directory."""
    path = Path(path)
    if path.is_dir():
        yield verify_directory(path, trusted_keys_dir)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bundle-"))
    try:
        stage_bundle(path, tmp / "b")
        yield verify_directory(tmp / "b", trusted_keys_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_bundle(path: Path, trusted_keys_dir: Path) -> Manifest:
    """Verify a bundle (directory or tar) and return its manifest; raise BundleRejected naming the reason."""
    with open_bundle(path, trusted_keys_dir) as bundle:
        return bundle.manifest
