"""The registry: refusals leave it unchanged; install / activate / rollback; atomic swaps under load."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.bundle import pack_bundle
from engines.errors import BundleRejected, EngineError, RuntimeMissing
from engines.registry import Registry
from tests.engines._helpers import golden_inputs, keypair, make_bundle, run_direct, weights


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the registry root but the audit log and the lock."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("audit.jsonl", ".lock")
    }


def _untrusted(tmp: Path, pem: bytes) -> Path:
    return make_bundle(tmp / "b", keypair(tmp / "rogue", "rogue"))


def _byte_changed(tmp: Path, pem: bytes) -> Path:
    bundle = make_bundle(tmp / "b", pem)
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    return bundle


def _manifest_edited(tmp: Path, pem: bytes) -> Path:
    bundle = make_bundle(tmp / "b", pem)
    data = json.loads((bundle / "manifest.json").read_text())
    data["golden"]["atol"] = 1000.0
    (bundle / "manifest.json").write_text(json.dumps(data))
    return bundle


def _golden_fails(tmp: Path, pem: bytes) -> Path:
    x = golden_inputs()["x"]
    w, b = weights(0)
    wrong = np.maximum(x @ w + b, 0) + 0.5
    return make_bundle(tmp / "b", pem, golden_outputs={"y": wrong.astype(np.float32)})


def _needs_tensorrt(tmp: Path, pem: bytes) -> Path:
    from engines.bundle import write_bundle

    tmp.mkdir(parents=True, exist_ok=True)
    plan = tmp / "model.plan"
    plan.write_bytes(os.urandom(256))
    fields: dict[str, Any] = {
        "task": "test_task", "version": "9.0.0", "precision": "fp16",
        "backend": {"name": "tensorrt", "trt_version": "10.3.0.26", "compute_capability": "8.9",
                    "hardware_compatibility": "none", "cuda_major": 12},
        "model_card": {"inputs": [{"name": "x", "shape": ["N", 8], "dtype": "float32"}],
                       "outputs": [{"name": "y", "shape": ["N", 3], "dtype": "float32"}]},
        "golden": {"inputs": golden_inputs(), "outputs": {"y": np.zeros((2, 3), np.float32)}},
    }
    return write_bundle(tmp / "b", fields, {"model.plan": plan}, pem)


REFUSALS: list[tuple[str, Callable[[Path, bytes], Path], str]] = [
    ("untrusted key", _untrusted, "signature does not verify against any trusted key"),
    ("one byte of the model changed", _byte_changed, "sha256 of 'model.onnx' .* does not match"),
    ("manifest edited after signing", _manifest_edited, "changed after signing"),
    ("golden set fails", _golden_fails, "golden set failed on onnxruntime: output 'y' differs"),
    ("requires TensorRT", _needs_tensorrt, "requires TensorRT 10.3.0.26, which is not installed"),
]


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
@pytest.mark.parametrize(("make", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refused_bundles_leave_the_registry_unchanged(
    tmp_path: Path, registry: Registry, vendor_pem: bytes, make: Callable[[Path, bytes], Path], reason: str,
    as_tar: bool,
) -> None:
    if make is _needs_tensorrt:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            pass
        else:
            pytest.skip("tensorrt is installed here; this case tests a machine without it")
    registry.install(make_bundle(tmp_path / "good", vendor_pem, version="0.1"), "tester")
    registry.activate("test_task", "0.1", "tester")
    before = snapshot(registry.root)
    bundle = make(tmp_path / "bad", vendor_pem)
    if as_tar:
        bundle = pack_bundle(bundle, tmp_path / "bad.tar")
    with pytest.raises(BundleRejected, match=reason):
        registry.install(bundle, "tester")
    assert snapshot(registry.root) == before
    assert not list((registry.root / ".staging").iterdir())
    assert registry.active_versions() == {"test_task": "0.1"}
    last = json.loads((registry.root / "audit.jsonl").read_text().splitlines()[-1])
    assert last["action"] == "engine_install_refused" and last["actor"] == "tester"
    assert re_search(reason, last["detail"]["reason"])


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_empty_or_missing_root(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "nothing-here", tmp_path / "keys")
    assert registry.active_versions() == {} and registry.list() == []
    with pytest.raises(EngineError, match="no active engine for task 'pathology_tile'"):
        registry.load_active("pathology_tile")


def test_install_activate_rollback_round_trip(tmp_path: Path, registry: Registry, vendor_pem: bytes) -> None:
    audited: list[tuple[str, str, str]] = []
    registry = Registry(registry.root, registry.trusted_keys_dir, audit=lambda a, act, s, d: audited.append((a, act, s)))
    m1 = registry.install(make_bundle(tmp_path / "b1", vendor_pem, "1.0", seed=1), "alice")
    m2 = registry.install(pack_bundle(make_bundle(tmp_path / "b2", vendor_pem, "2.0", seed=2), tmp_path / "b2.tar"), "bob")
    assert (m1.version, m2.version) == ("1.0", "2.0")
    assert registry.active_versions() == {}
    assert registry.install(tmp_path / "b1", "alice") == m1  # the same bundle again: a no-op
    with pytest.raises(BundleRejected, match="already installed with a different manifest"):
        registry.install(make_bundle(tmp_path / "b1x", vendor_pem, "1.0", seed=3), "alice")

    x = golden_inputs()
    expected = {v: run_direct(tmp_path / f".b{i}-src" / "model.onnx", x)["y"] for i, v in ((1, "1.0"), (2, "2.0"))}
    registry.activate("test_task", "1.0", "alice")
    registry.activate("test_task", "2.0", "bob")
    states = {r.version: (r.state, r.installed_by) for r in registry.list()}
    assert states == {"1.0": ("previous", "alice"), "2.0": ("active", "bob")}
    with registry.load_active("test_task") as engine:
        assert engine.manifest.version == "2.0" and engine.manifest.sha256 == m2.sha256
        np.testing.assert_array_equal(engine.infer(x)["y"], expected["2.0"])
    assert registry.rollback("test_task", "carol") == "1.0"
    assert registry.active_versions() == {"test_task": "1.0"}
    with registry.load_active("test_task", cpu_threads=1) as engine:
        np.testing.assert_array_equal(engine.infer(x)["y"], expected["1.0"])
    with pytest.raises(EngineError, match="no previous version of 'test_task'"):
        registry.rollback("test_task", "carol")
    with pytest.raises(EngineError, match="version '3.0' is not installed; installed: 1.0, 2.0"):
        registry.activate("test_task", "3.0", "carol")
    actions = [a for _, a, _ in audited]
    assert actions == ["engine_install", "engine_install", "engine_install_refused", "engine_activate",
                       "engine_activate", "engine_rollback"]
    assert len((registry.root / "audit.jsonl").read_text().splitlines()) == len(actions)


def test_tampering_after_install_is_refused_at_load(tmp_path: Path, registry: Registry, vendor_pem: bytes) -> None:
    registry.install(make_bundle(tmp_path / "b", vendor_pem), "alice")
    registry.activate("test_task", "1.0.0", "alice")
    model = registry.root / "test_task" / "1.0.0" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(BundleRejected, match="sha256 of 'model.onnx'"):
        registry.load_active("test_task")


def test_removing_the_trusted_key_stops_loading(tmp_path: Path, registry: Registry, vendor_pem: bytes) -> None:
    registry.install(make_bundle(tmp_path / "b", vendor_pem), "alice")
    registry.activate("test_task", "1.0.0", "alice")
    (registry.trusted_keys_dir / "vendor.pub").unlink()
    with pytest.raises(BundleRejected, match="no trusted keys"):
        registry.load_active("test_task")


def test_a_reader_never_sees_a_half_swapped_engine(tmp_path: Path, registry: Registry, vendor_pem: bytes) -> None:
    for version, seed in (("1", 1), ("2", 2)):
        registry.install(make_bundle(tmp_path / f"b{version}", vendor_pem, version, seed=seed), "alice")
    x = golden_inputs()
    expected = {v: run_direct(tmp_path / f".b{v}-src" / "model.onnx", x)["y"] for v in ("1", "2")}
    registry.activate("test_task", "1", "alice")
    stop = threading.Event()
    failures: list[str] = []
    seen: dict[str, int] = {"1": 0, "2": 0}

    def reader() -> None:
        while not stop.is_set():
            try:
                with registry.load_active("test_task", cpu_threads=1) as engine:
                    version = engine.manifest.version
                    if not np.array_equal(engine.infer(x)["y"], expected[version]):
                        failures.append(f"version {version} gave another version's output")
                    seen[version] += 1
            except Exception as exc:  # any failure at all is what this test looks for
                failures.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(100):
            registry.activate("test_task", "2" if i % 2 == 0 else "1", "alice", allow_downgrade=True)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures, failures[:3]
    assert sum(seen.values()) > 0
    assert registry.active_versions() == {"test_task": "1"}
    pointer = json.loads((registry.root / "test_task" / "active.json").read_text())
    assert pointer["version"] == "1" and len(pointer["history"]) <= 20


def test_runtime_missing_at_load_is_clear(tmp_path: Path, registry: Registry, vendor_pem: bytes) -> None:
    """A TensorRT bundle that got onto disk anyway fails at start with RuntimeMissing, before any load."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here")
    bundle = _needs_tensorrt(tmp_path, vendor_pem)
    target = registry.root / "test_task" / "9.0.0"
    target.parent.mkdir(parents=True)
    bundle.rename(target)
    (registry.root / "test_task" / "active.json").write_text(json.dumps({"version": "9.0.0", "history": []}))
    with pytest.raises(RuntimeMissing, match="requires TensorRT 10.3.0.26"):
        registry.load_active("test_task")


@pytest.mark.parametrize(
    ("version", "than", "older"),
    [("1.0.0", "1.1.0", True), ("1.10", "1.9", False), ("2.0", "10.0", True), ("1.0.0rc1", "1.0.0", True),
     ("1.0.0+fp16", "1.0.0+int8", False), ("1.0.0+int8", "1.0.0+fp16", False), ("0.9+fp32", "1.0+fp32", True),
     ("v2-build7", "v2-build10", True), ("1", "2", True), ("2", "2", False)],
)
def test_version_order(version: str, than: str, older: bool) -> None:
    from engines.versions import is_downgrade

    assert is_downgrade(version, than) is older


def test_older_versions_need_allow_downgrade_and_are_audited(tmp_path: Path, registry: Registry,
                                                             vendor_pem: bytes) -> None:
    """Finding 11: a validly signed older bundle cannot replace a newer one unless the operator forces it."""
    registry.install(make_bundle(tmp_path / "b2", vendor_pem, "2.0.0", seed=2), "alice")
    registry.activate("test_task", "2.0.0", "alice")
    old = make_bundle(tmp_path / "b1", vendor_pem, "1.0.0", seed=1)
    with pytest.raises(BundleRejected, match="test_task/1.0.0 is older than test_task/2.0.0.*--allow-downgrade"):
        registry.install(old, "mallory")
    assert registry.versions("test_task") == ["2.0.0"] and not list((registry.root / ".staging").iterdir())
    registry.install(old, "alice", allow_downgrade=True)
    with pytest.raises(BundleRejected, match="older than test_task/2.0.0"):
        registry.activate("test_task", "1.0.0", "mallory")
    assert registry.active_version("test_task") == "2.0.0"
    registry.activate("test_task", "1.0.0", "alice", allow_downgrade=True)
    assert registry.active_version("test_task") == "1.0.0"
    registry.activate("test_task", "2.0.0", "alice")  # forward again needs nothing
    assert registry.rollback("test_task", "alice") == "1.0.0"  # rollback stays the operator's undo
    lines = [json.loads(line) for line in (registry.root / "audit.jsonl").read_text().splitlines()]
    assert [(x["actor"], x["action"]) for x in lines if x["action"] == "engine_install_refused"] == [
        ("mallory", "engine_install_refused")]
    forced = [(x["action"], x["detail"]["downgrade_from"]) for x in lines if "downgrade_from" in x["detail"]]
    assert forced == [("engine_install", "2.0.0"), ("engine_activate", "2.0.0")]


def test_variants_of_one_release_are_not_downgrades(tmp_path: Path, registry: Registry, vendor_pem: bytes) -> None:
    for seed, version in enumerate(("1.0.0+int8", "1.0.0+fp16", "1.0.0+fp32")):
        registry.install(make_bundle(tmp_path / version, vendor_pem, version, seed=seed), "demo")
        registry.activate("test_task", version, "demo")
    assert registry.active_version("test_task") == "1.0.0+fp32"
