"""The compatibility record against this machine, checked before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.compat import parse_version
from engines.errors import BundleRejected
from engines.registry import Registry
from tests.engines._helpers import make_bundle


@pytest.mark.parametrize(("text", "parsed"), [("10.3.0.26", (10, 3, 0, 26)), ("1.20.1+cu12", (1, 20, 1)), ("11", (11,))])
def test_parse_version(text: str, parsed: tuple[int, ...]) -> None:
    assert parse_version(text) == parsed


def test_parse_version_needs_a_number() -> None:
    with pytest.raises(BundleRejected, match="no numeric part"):
        parse_version("latest")


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ({"name": "onnxruntime", "min_version": "99.0"}, r"requires ONNX Runtime >= 99.0; this machine has \d"),
        ({"name": "triton", "url": "http://127.0.0.1:1"}, "a Triton bundle must record model_name"),
        ({"name": "triton", "model_name": "m"}, "no Triton URL"),
        ({"name": "tensorrt"}, "a TensorRT bundle must record trt_version"),
    ],
)
def test_incompatible_bundles_are_refused(
    tmp_path: Path, registry: Registry, vendor_pem: bytes, backend: dict[str, str], reason: str
) -> None:
    with pytest.raises(BundleRejected, match=reason):
        registry.install(make_bundle(tmp_path / "b", vendor_pem, backend=backend), "tester")
    assert registry.list() == []
