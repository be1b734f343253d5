"""The project's one home for durable files: temporary name, fsync, rename, directory fsync.

Every file the project writes for keeps (spool instances, outbox results,
engine bundles and registry pointers, export artefacts, synthetic test data)
goes through these helpers (shared/DESIGN.md invariant 1), so a crash leaves
either the old file or the complete new one, never a torn one, and the rename
itself survives a power cut:

- :func:`atomic_write`: bytes in memory to ``path``;
- :func:`durable_file`: a file streamed by the caller (``with durable_file(p) as out: out.write(...)``);
- :func:`durable_path`: a temporary *path* for a library that writes by name (``ds.save_as``, ``onnx.save``);
- :func:`replace_durably`: fsync a complete file, rename it into place, fsync the directory;
- :func:`fsync_dir`: make a directory's entries durable.

The module imports only the standard library, so ``dicom_node`` (whose spool
streams instances with the same steps) imports it without depending on the
engines; see :mod:`engines.errors` for the same arrangement of the error root.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

__all__ = ["CHUNK", "atomic_write", "copy_stream", "durable_file", "durable_path", "fsync_dir", "replace_durably",
           "sha256_file", "temporary_name"]

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or create inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this process and call (same directory, so a rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def replace_durably(tmp: Path, path: Path) -> None:
    """fsync the complete file ``tmp``, rename it over ``path``, fsync ``path``'s directory."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def durable_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write by name; on a clean exit it replaces ``path`` durably.

    On an error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def durable_file(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file to stream into; on a clean exit it replaces ``path`` durably (see :func:`durable_path`)."""
    with durable_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as out:
            yield out  # closed (flushed) here; replace_durably fsyncs it before the rename


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: temporary name in the same directory, fsync, os.replace, fsync dir."""
    with durable_file(path, mode) as out:
        out.write(data)


def copy_stream(src: IO[bytes], dest: Path) -> str:
    """Copy a stream into a new file ``dest`` (must not exist), fsync it; return its sha256."""
    digest = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
