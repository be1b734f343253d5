"""Reference architectures: pathology tile encoder, gated-attention MIL aggregator, breast DCE 4-D CNN."""

from export.models.dce4d import Conv4d, DceConfig, DceNet
from export.models.mil import GatedAttentionMIL, MilConfig
from export.models.tile import TileConfig, TileEncoder

__all__ = [
    "Conv4d",
    "DceConfig",
    "DceNet",
    "GatedAttentionMIL",
    "MilConfig",
    "TileConfig",
    "TileEncoder",
]
