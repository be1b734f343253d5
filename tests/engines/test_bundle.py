"""Bundle writing, packing and verification, including hostile tars."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from engines.bundle import pack_bundle, stage_bundle, verify_bundle, write_bundle
from engines.errors import BundleRejected, EngineError
from engines.manifest import Manifest, canonical_bytes
from tests.engines._helpers import keypair, linear_model, make_bundle


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
