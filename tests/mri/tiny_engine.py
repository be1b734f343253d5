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

CARD: dict[str, Any] = {
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
