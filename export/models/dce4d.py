"""Breast DCE-MRI 4-D CNN with clinical-variable fusion (after the UT Southwestern model).

Input ``dce`` [N, T, Z, Y, X] (T phases: pre-contrast + post-contrast, signal relative
to the pre-contrast phase) and ``clinical`` [N, 10] (five variables and their
missing-value indicators); output ``probability`` [N, 1] of axillary lymph-node
metastasis.

4-D convolution over (t, z, y, x) is a sum of 3-D convolutions over the temporal
kernel offsets: y_t = sum_k conv3d(x_{t+k}, W_k). TensorRT and ONNX have 2-D and
3-D convolutions only, so the time axis is static and, for every output frame, the
``kt`` input frames are stacked along channels (one Conv3d whose weight is the
concatenation of the W_k); the output frames are folded into the batch so each 4-D
layer exports as exactly one standard ONNX ``Conv`` over 5-D tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

#: order of the clinical vector; indicators follow in the same order
CLINICAL_VARIABLES = ("age", "er", "her2", "ki67", "grade")
#: divisor that scales each variable to about 0..1
CLINICAL_SCALE = {"age": 100.0, "er": 1.0, "her2": 1.0, "ki67": 100.0, "grade": 3.0}


@dataclass(frozen=True)
class DceConfig:
    """Architecture and input geometry of the DCE network."""

    phases: int = 5  #: T, static
    grid: tuple[int, int, int] = (16, 64, 64)  #: (z, y, x) voxels
    spacing_mm: tuple[float, float, float] = (3.0, 1.5, 1.5)  #: (z, y, x) resampled voxel spacing
    width: int = 8  #: channels of the first 4-D layer
    temporal_kernel: int = 3  #: kt of both 4-D layers
    clinical: int = 10  #: length of the clinical vector
    clinical_hidden: int = 16
    head_hidden: int = 32

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Conv4d(nn.Module):
    """4-D convolution (valid in time) + BatchNorm + ReLU on [N, T, C, Z, Y, X] with static T, Z, Y, X."""

    def __init__(
        self, cin: int, cout: int, frames: int, temporal_kernel: int, stride: tuple[int, int, int]
    ) -> None:
        super().__init__()
        if not 1 <= temporal_kernel <= frames:
            raise ValueError(f"temporal kernel {temporal_kernel} must be in 1..{frames} (the static frame count)")
        self.cin, self.cout, self.frames, self.kt = cin, cout, frames, temporal_kernel
        self.out_frames = frames - temporal_kernel + 1
        self.conv = nn.Conv3d(cin * temporal_kernel, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU()

    def temporal_weights(self) -> list[torch.Tensor]:
        """The 3-D kernels W_k [cout, cin, 3, 3, 3], one per temporal offset k."""
        return list(self.conv.weight.split(self.cin, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, frames, channels, z, y, xx = x.shape
        if frames != self.frames or channels != self.cin:
            raise ValueError(f"Conv4d expects [N, {self.frames}, {self.cin}, Z, Y, X], got {tuple(x.shape)}")
        stacked = torch.stack(
            [torch.cat([x[:, t + k] for k in range(self.kt)], dim=1) for t in range(self.out_frames)], dim=1
        )
        folded = stacked.reshape(-1, self.kt * self.cin, z, y, xx)
        out = self.relu(self.bn(self.conv(folded)))
        return out.reshape(-1, self.out_frames, *out.shape[1:])


class DceNet(nn.Module):
    """Two 4-D layers (time collapses to one frame), one 3-D layer, mean+max pooling, clinical fusion, head."""

    def __init__(self, config: DceConfig = DceConfig()) -> None:
        super().__init__()
        self.config = config
        w, kt = config.width, config.temporal_kernel
        self.conv1 = Conv4d(1, w, config.phases, kt, stride=(1, 2, 2))
        self.conv2 = Conv4d(w, 2 * w, self.conv1.out_frames, min(kt, self.conv1.out_frames), stride=(2, 2, 2))
        frames = self.conv2.out_frames
        self.conv3 = nn.Sequential(
            nn.Conv3d(2 * w * frames, 4 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm3d(4 * w), nn.ReLU()
        )
        self.clinical = nn.Sequential(nn.Linear(config.clinical, config.clinical_hidden), nn.ReLU())
        self.head = nn.Sequential(
            nn.Linear(8 * w + config.clinical_hidden, config.head_hidden), nn.ReLU(), nn.Linear(config.head_hidden, 1)
        )

    def forward(self, dce: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        _, phases, z, y, x = dce.shape
        h = self.conv2(self.conv1(dce.reshape(-1, phases, 1, z, y, x)))
        h = h.reshape(h.shape[0], -1, *h.shape[3:])  # remaining frames onto channels
        features = self.conv3(h).flatten(2)  # a small lesion: max pooling keeps it, mean pooling dilutes it
        pooled = torch.cat([features.mean(dim=2), features.amax(dim=2)], dim=1)
        fused = torch.cat([pooled, self.clinical(clinical)], dim=1)
        return torch.sigmoid(self.head(fused))


def clinical_vector(values: dict[str, float | None]) -> list[float]:
    """[age/100, ER, HER2, Ki67/100, grade/3, missing indicators...]; a missing value is 0 with indicator 1."""
    unknown = sorted(set(values) - set(CLINICAL_VARIABLES))
    if unknown:
        raise ValueError(f"unknown clinical variables {unknown}; known: {list(CLINICAL_VARIABLES)}")
    scaled = []
    missing = []
    for name in CLINICAL_VARIABLES:
        value = values.get(name)
        scaled.append(0.0 if value is None else float(value) / CLINICAL_SCALE[name])
        missing.append(1.0 if value is None else 0.0)
    return scaled + missing
