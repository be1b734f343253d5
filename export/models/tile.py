"""Pathology tile encoder: a compact residual CNN whose width and depth are configurable.

After the foundation-model approach (a tile encoder whose embeddings a slide-level
aggregator pools): RGB tile [N, 3, S, S], normalized by the card's mean/std, to an
embedding [N, D]. Defaults follow the reference setting, 224 px at 0.5 um/px; the
demo uses a narrower, smaller configuration recorded in its model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

#: ImageNet-style channel statistics on a 0..1 scale, the card's ``mean`` and ``std``
H_AND_E_MEAN = (0.70, 0.55, 0.70)
H_AND_E_STD = (0.20, 0.22, 0.18)


@dataclass(frozen=True)
class TileConfig:
    """Architecture of the tile encoder."""

    tile_size: int = 224  #: input side in pixels
    mpp: float = 0.5  #: microns per pixel of the input
    width: int = 32  #: channels of the first stage; each stage doubles them
    depth: int = 3  #: number of stages (each halves the resolution)
    blocks: int = 1  #: residual blocks per stage
    embed_dim: int = 128  #: D, length of the embedding

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class _ConvBnRelu(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=False),
        )


class _Residual(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (a residual Add TensorRT quantizes)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _ConvBnRelu(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.conv1(x))))


class TileEncoder(nn.Module):
    """Compact CNN: stride-2 stem, ``depth`` stages of residual blocks, global pool, linear embedding."""

    def __init__(self, config: TileConfig = TileConfig()) -> None:
        super().__init__()
        if config.depth < 1 or config.width < 4 or config.embed_dim < 2:
            raise ValueError(f"tile encoder needs depth >= 1, width >= 4, embed_dim >= 2, got {config}")
        self.config = config
        layers: list[nn.Module] = [_ConvBnRelu(3, config.width, stride=2)]
        channels = config.width
        for stage in range(config.depth):
            out = config.width * 2**stage
            layers.append(_ConvBnRelu(channels, out, stride=2))
            layers.extend(_Residual(out) for _ in range(config.blocks))
            channels = out
        self.features = nn.Sequential(*layers)
        self.embed = nn.Linear(channels, config.embed_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pooled = self.features(image).mean(dim=(2, 3))
        return self.embed(pooled)


class TileProbe(nn.Module):
    """Linear tumour probe on the embedding, used to train the encoder and to score it at the gate."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_dim, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.relu(embedding)).squeeze(-1)
