"""Reference architectures: pathology tile encoders (CNN, timm-layout ViT), gated-attention MIL aggregator, breast DCE 4-D CNN."""

from export.models.dce4d import Conv4d, DceConfig, DceNet
from export.models.mil import GatedAttentionMIL, MilConfig
from export.models.tile import TileConfig, TileEncoder
from export.models.vit import PRESETS, VisionTransformer, VitConfig

__all__ = [
    "Conv4d",
    "DceConfig",
    "DceNet",
    "GatedAttentionMIL",
    "MilConfig",
    "PRESETS",
    "TileConfig",
    "TileEncoder",
    "VisionTransformer",
    "VitConfig",
]
