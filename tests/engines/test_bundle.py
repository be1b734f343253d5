"""Bundle writing, packing and verification, including hostile tars."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from engines.bundle import pack_bundle, stage_bundle, verify_bundle, write_bundle
from engines.errors import BundleRejected, EngineError
from engines.manifest import Manifest, canonical_bytes
from tests.engines._helpers import keypair, linear_model, make_bundle

if TYPE_CHECKING:
    from engines.registry import Registry


def test_written_bundle_verifies_as_directory_and_tar(tmp_path: Path, keys_dir: Path, vendor_pem: bytes) -> None:
    bundle = make_bundle(tmp_path / "b", vendor_pem)
    manifest = verify_bundle(bundle, keys_dir)
    assert (manifest.task, manifest.version, manifest.precision, manifest.vendor) == ("test_task", "1.0.0", "fp32", "tests")
    assert manifest.model_file == "model.onnx" and set(manifest.files) == {"model.onnx", "golden.npz"}
    assert manifest.sha256 == __import__("hashlib").sha256(canonical_bytes(manifest.raw)).hexdigest()
    assert verify_bundle(pack_bundle(bundle, tmp_path / "b.tar"), keys_dir) == manifest


def test_tar_with_one_top_folder_is_accepted(tmp_path: Path, keys_dir: Path, vendor_pem: bytes) -> None:
    bundle = make_bundle(tmp_path / "b", vendor_pem)
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        tar.add(bundle, arcname="mybundle")
    assert verify_bundle(tmp_path / "t.tar", keys_dir).version == "1.0.0"


def _tar_with(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, (1 if kind == tarfile.REGTYPE else 0)
    return info


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([_info("../escape")], "escapes the bundle"),
        ([_info("/etc/passwd")], "escapes the bundle"),
        ([_info("model.onnx", tarfile.SYMTYPE, "/etc/passwd")], "link or special file"),
        ([_info("model.onnx", tarfile.LNKTYPE, "manifest.json")], "link or special file"),
        ([_info("dev", tarfile.CHRTYPE)], "link or special file"),
        ([_info("a/b/c")], "nested"),
        ([_info("a/x"), _info("b/y")], "nested"),
        ([_info("x"), _info("top/y")], "mixes files"),
        ([_info("x"), _info("./x")], "repeats a file name"),
    ],
)
def test_hostile_tars_are_refused_before_extraction(tmp_path: Path, members: list[tarfile.TarInfo], reason: str) -> None:
    tar = _tar_with(tmp_path / "evil.tar", members)
    dest = tmp_path / "dest"
    with pytest.raises(BundleRejected, match=reason):
        stage_bundle(tar, dest, tmp_path / "keys")
    assert not dest.exists()
    assert not (tmp_path / "escape").exists()


def test_directory_bundle_with_a_symlink_is_refused(tmp_path: Path, keys_dir: Path, vendor_pem: bytes) -> None:
    bundle = make_bundle(tmp_path / "b", vendor_pem)
    (bundle / "extra").symlink_to("/etc/passwd")
    with pytest.raises(BundleRejected, match="1 entry its manifest does not list"):
        verify_bundle(bundle, keys_dir)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: (b / "stray.txt").write_text("x"), "has 1 entry its manifest does not list"),
        (lambda b: (b / "golden.npz").unlink(), "missing file.*golden.npz"),
        (lambda b: (b / "manifest.sig").unlink(), "no manifest.sig"),
        (lambda b: (b / "manifest.json").write_text("{not json"), "not valid UTF-8 JSON"),
    ],
)
def test_bundle_file_set_must_match_the_manifest(
    tmp_path: Path, keys_dir: Path, vendor_pem: bytes, change: object, reason: str
) -> None:
    bundle = make_bundle(tmp_path / "b", vendor_pem)
    change(bundle)  # type: ignore[operator]
    with pytest.raises(BundleRejected, match=reason):
        verify_bundle(bundle, keys_dir)


def test_reformatted_manifest_still_verifies_but_edited_does_not(tmp_path: Path, keys_dir: Path, vendor_pem: bytes) -> None:
    bundle = make_bundle(tmp_path / "b", vendor_pem)
    data = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps(data, indent=7))  # same content, other whitespace
    assert verify_bundle(bundle, keys_dir).version == "1.0.0"
    data["model_card"]["outputs"][0]["meaning"] = "something else"
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleRejected, match="changed after signing"):
        verify_bundle(bundle, keys_dir)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"task": "Bad Task"}, "task 'Bad Task' must match"),
        ({"version": "../1"}, "version '../1' must match"),
        ({"precision": "int4"}, "precision 'int4' is not one of fp32, fp16, int8"),
        ({"backend": {"name": "tflite"}}, "backend .* must be an object whose 'name' is one of"),
        ({"batch_sizes": [4, 2]}, r"batch_sizes \[4, 2\] must be"),
        ({"surprise": 1}, "unknown field.*surprise"),
        ({"model_file": "nope.onnx"}, "model_file 'nope.onnx' is not one of the files"),
        ({"model_card": {"inputs": [{"name": "x", "shape": [0], "dtype": "float32"}],
                           "outputs": [{"name": "y", "shape": [1], "dtype": "float32"}]}},
         "shape .* must be a list of positive ints"),
    ],
)
def test_write_bundle_refuses_invalid_manifests(tmp_path: Path, vendor_pem: bytes, fields: dict, reason: str) -> None:
    with pytest.raises(BundleRejected, match=reason):
        make_bundle(tmp_path / "b", vendor_pem, **fields)


def test_write_bundle_needs_an_empty_directory(tmp_path: Path, vendor_pem: bytes) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "junk").write_text("x")
    model = linear_model(tmp_path / "m.onnx")
    with pytest.raises(EngineError, match="not empty"):
        write_bundle(tmp_path / "b", {}, {"model.onnx": model}, vendor_pem)


def test_manifest_rejects_duplicate_keys() -> None:
    from engines.manifest import parse_manifest_bytes

    with pytest.raises(BundleRejected, match="repeats the key"):
        parse_manifest_bytes(b'{"task": "a", "task": "b"}')
    with pytest.raises(BundleRejected, match="lacks required field"):
        Manifest.from_dict({"task": "a"})


def test_bundle_signed_by_an_untrusted_key_is_refused(tmp_path: Path, keys_dir: Path, vendor_pem: bytes) -> None:
    rogue = keypair(tmp_path / "rogue", "rogue")
    with pytest.raises(BundleRejected, match="does not verify against any trusted key"):
        verify_bundle(make_bundle(tmp_path / "b", rogue), keys_dir)


GNU_TAR = Path("/usr/bin/tar")
SPARSE_CLAIM = 2 * 1024**3


@pytest.mark.parametrize("tar_format", ["gnu", "pax"])
def test_tiny_tar_with_a_2gib_sparse_member_is_refused_writing_nothing(
    tmp_path: Path, registry: "Registry", vendor_pem: bytes, tar_format: str
) -> None:
    """Finding 9: GNU tar's sparse member (old GNU and PAX 1.0 forms) claiming 2 GiB, in a ~10 KB tar."""
    if not GNU_TAR.is_file():
        pytest.skip(f"{GNU_TAR} (GNU tar) is not installed")
    bundle = make_bundle(tmp_path / "b", vendor_pem)
    with open(bundle / "model.onnx", "r+b") as model:
        model.truncate(SPARSE_CLAIM)  # a hole: no disk space, 2 GiB to whoever expands it
    tar = tmp_path / "sparse.tar"
    subprocess.run([str(GNU_TAR), "--sparse", f"--format={tar_format}", "-cf", str(tar), "-C", str(bundle), "."],
                   check=True, capture_output=True)
    assert tar.stat().st_size < 64 * 1024
    with pytest.raises(BundleRejected, match=f"'./model.onnx' is a sparse file .*claims {SPARSE_CLAIM} bytes"):
        registry.install(tar, "tester")
    staging = registry.root / ".staging"
    assert not [p for p in staging.rglob("*")], "a refused bundle wrote into engines/.staging"
    assert registry.versions("test_task") == []


def _raw_tar(path: Path, infos: list[tarfile.TarInfo], fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for info in infos:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: [_info(f"f{i}") for i in range(300)], "more than 256 members"),
        (lambda: [_info("fifo", tarfile.FIFOTYPE)], "link or special file"),
        (lambda: [_info("blk", tarfile.BLKTYPE)], "link or special file"),
        (lambda: [_info("cont", tarfile.CONTTYPE)], "link or special file"),
        (lambda: [_info("./../up")], "escapes the bundle"),
    ],
)
def test_tar_headers_are_checked_before_anything_is_read(
    tmp_path: Path, keys_dir: Path, build: object, reason: str
) -> None:
    tar = _raw_tar(tmp_path / "t.tar", build())  # type: ignore[operator]
    with pytest.raises(BundleRejected, match=reason):
        stage_bundle(tar, tmp_path / "dest", keys_dir)
    assert not (tmp_path / "dest").exists()


def test_oversized_extended_header_and_total_size_are_refused(tmp_path: Path, keys_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    big_name = _info("n" * 100)
    big_name.pax_headers = {"comment": "c" * (2 << 20)}
    with pytest.raises(BundleRejected, match="tar header of .* bytes .* is larger than"):
        stage_bundle(_raw_tar(tmp_path / "h.tar", [big_name]), tmp_path / "d1", keys_dir)
    from engines import _sources

    monkeypatch.setattr(_sources, "MAX_BUNDLE_BYTES", 1000)
    members = [_info("a"), _info("b")]
    members[0].size = members[1].size = 600
    with pytest.raises(BundleRejected, match="add up to more than 1000 bytes"):
        stage_bundle(_raw_tar(tmp_path / "s.tar", members), tmp_path / "d2", keys_dir)
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()


def test_signature_is_verified_before_any_model_byte_is_written(tmp_path: Path, keys_dir: Path,
                                                                vendor_pem: bytes) -> None:
    rogue = keypair(tmp_path / "rogue", "rogue")
    tar = pack_bundle(make_bundle(tmp_path / "b", rogue), tmp_path / "b.tar")
    with pytest.raises(BundleRejected, match="does not verify against any trusted key"):
        stage_bundle(tar, tmp_path / "dest", keys_dir)
    assert not (tmp_path / "dest").exists()


def test_a_file_changed_after_signing_is_caught_as_it_is_written(tmp_path: Path, keys_dir: Path,
                                                                 vendor_pem: bytes) -> None:
    bundle = make_bundle(tmp_path / "b", vendor_pem)
    with open(bundle / "model.onnx", "ab") as model:
        model.write(b"\0")
    with pytest.raises(BundleRejected, match="sha256 of 'model.onnx' .* does not match"):
        stage_bundle(pack_bundle(bundle, tmp_path / "b.tar"), tmp_path / "dest", keys_dir)
