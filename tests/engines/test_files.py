"""The one durable-file helper: temporary name, fsync, rename, directory fsync; nothing torn on failure."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from engines import files
from engines.files import atomic_write, durable_file, durable_path

ROOT = Path(__file__).resolve().parents[2]


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_durable_file_replaces_the_file_and_syncs_file_then_directory(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    with durable_file(target) as out:
        out.write(b"new ")
        out.write(b"content")
        assert target.read_bytes() == b"old", "nothing is visible under the name before the rename"
    assert target.read_bytes() == b"new content" and _names(tmp_path) == ["out.bin"]
    assert synced[0].startswith(str(tmp_path / ".out.bin.tmp-")), "the data is synced under its temporary name"
    assert synced[-1] == str(tmp_path), "then the directory, so the rename is durable"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="half way"):
        with durable_file(target) as out:
            out.write(b"partial")
            raise RuntimeError("half way")
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["out.bin"]
    with pytest.raises(ValueError, match="library failed"):
        with durable_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("library failed")
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["out.bin"]


def test_atomic_write_and_durable_path(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.json", b"{}", mode=0o600)
    assert (tmp_path / "a.json").read_bytes() == b"{}" and (tmp_path / "a.json").stat().st_mode & 0o777 == 0o600
    with durable_path(tmp_path / "b.dcm") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".b.dcm.tmp-")
        tmp.write_bytes(b"DICM")
    assert _names(tmp_path) == ["a.json", "b.dcm"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_the_shared_leaf_modules_need_only_the_standard_library() -> None:
    """engines.files and engines.errors are what dicom_node and export share with engines: no other arrow."""
    for module in ("files.py", "errors.py"):
        outside = {n for n in _imports(ROOT / "engines" / module) if n.split(".")[0] not in sys.stdlib_module_names}
        assert not outside, (module, outside)
    from_engines = {n for path in (ROOT / "dicom_node").rglob("*.py") for n in _imports(path) if n.startswith("engines")}
    assert from_engines <= {"engines.files", "engines.errors"}, from_engines
