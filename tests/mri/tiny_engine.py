"""A tiny breast_mri engine for tests: a small torch model exported to ONNX, run by onnxruntime.

The adapter has what the pipeline uses of an engine: ``.infer(dict) -> dict`` and
``.manifest`` (task, version, vendor, precision, sha256, demo, model_card).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from engines.cards import BreastMriCard

#: the tiny model's tensors (every breast_mri card states them)
TENSORS: dict[str, Any] = {
    "inputs": [{"name": "dce", "shape": ["N", 5, 16, 64, 64], "dtype": "float32"},
               {"name": "clinical", "shape": ["N", 10], "dtype": "float32"}],
    "outputs": [{"name": "probability", "shape": ["N", 1], "dtype": "float32"}],
}
CARD: dict[str, Any] = {
    **TENSORS,
    "name": "tiny test DCE model",
    "threshold": 0.5,
    "phase_count": 5,
    "grid": [16, 64, 64],
    "spacing_mm": [3.0, 1.5, 1.5],
    "clinical_variables": ["age", "er", "her2", "ki67", "grade"],
}


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(5, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 + 10, 1)

    def forward(self, dce: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(dce)).amax(dim=(2, 3, 4))
        return torch.sigmoid(self.head(torch.cat([h, 4.0 * clinical], dim=1)))


def export_tiny(path: Path) -> Path:
    torch.manual_seed(0)
    model = _Tiny().eval()
    example = (torch.zeros(1, 5, 16, 64, 64), torch.zeros(1, 10))
    torch.onnx.export(model, example, str(path), input_names=["dce", "clinical"], output_names=["probability"],
                      dynamo=True, verbose=False)
    return path


@dataclass
class TinyManifest:
    sha256: str
    model_card: dict[str, Any] = field(default_factory=lambda: dict(CARD))
    task: str = "breast_mri"
    version: str = "0.0.1-test"
    vendor: str = "tests"
    precision: str = "fp32"
    demo: bool = True

    @property
    def card(self) -> BreastMriCard:
        """The typed card, as ``engines.manifest.Manifest.card`` (built from ``model_card`` as it is now)."""
        return mri_card(self.model_card)


def mri_card(card: dict[str, Any]) -> BreastMriCard:
    """The typed breast_mri card of ``card`` (the tiny model's tensors added where it states none)."""
    return BreastMriCard.from_dict({**TENSORS, **card})


class TinyEngine:
    """onnxruntime behind the engine interface; records the inputs of every call."""

    def __init__(self, onnx_path: Path, card: dict[str, Any] | None = None) -> None:
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.manifest = TinyManifest(hashlib.sha256(onnx_path.read_bytes()).hexdigest())
        if card is not None:
            self.manifest.model_card = card
        self.calls: list[dict[str, np.ndarray]] = []

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append({k: v.copy() for k, v in inputs.items()})
        (probability,) = self.session.run(["probability"], inputs)
        return {"probability": probability}


def install_tiny_bundle(data_dir: Path, card: dict[str, Any], onnx_path: Path) -> str:
    """Sign the tiny model as a ``breast_mri`` bundle with ``card``, install and activate it under ``data_dir``.

    What ``appliance serve`` loads in the end-to-end tests: seconds, where the demo engines need training.
    """
    from engines.bundle import write_bundle
    from engines.registry import Registry
    from engines.signing import generate_keypair

    trusted = data_dir / "trusted_keys"
    pair = generate_keypair(data_dir / "keys", "tests")
    trusted.mkdir(parents=True, exist_ok=True)
    (trusted / "tests.pub").write_bytes(pair.public_key.read_bytes())
    inputs = {"dce": np.zeros((1, 5, 16, 64, 64), np.float32), "clinical": np.zeros((1, 10), np.float32)}
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (probability,) = session.run(["probability"], inputs)
    full_card = {
        **card,
        "inputs": [{"name": "dce", "shape": ["N", 5, 16, 64, 64], "dtype": "float32"},
                   {"name": "clinical", "shape": ["N", 10], "dtype": "float32"}],
        "outputs": [{"name": "probability", "shape": ["N", 1], "dtype": "float32"}],
    }
    manifest = {
        "task": "breast_mri", "version": "0.0.1-test", "vendor": "tests", "precision": "fp32", "demo": True,
        "backend": {"name": "onnxruntime", "min_version": "1.17"}, "model_card": full_card, "batch_sizes": [1, 1],
        "golden": {"inputs": inputs, "outputs": {"probability": probability}, "atol": 1e-4, "rtol": 1e-3},
    }
    files = {onnx_path.name: onnx_path}
    data = onnx_path.with_name(onnx_path.name + ".data")  # the dynamo exporter may keep weights beside the graph
    if data.is_file():
        files[data.name] = data
    bundle = write_bundle(data_dir / "bundle-src", {**manifest, "model_file": onnx_path.name}, files,
                          pair.private_key.read_bytes())
    registry = Registry(data_dir / "engines", trusted)
    installed = registry.install(bundle, "tests")
    registry.activate("breast_mri", installed.version, "tests")
    return installed.version
