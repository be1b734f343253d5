"""Vision Transformer tile encoders with exactly timm's ``VisionTransformer`` state-dict layout.

Pathology foundation models (UNI, Virchow, Prov-GigaPath, H-optimus, Phikon) are
published as timm ``VisionTransformer`` checkpoints; timm itself cannot be
imported here (it needs torchvision), so the architecture is ours and
``tests/export/test_vit.py`` pins its parameter names and shapes to timm's
(``timm/models/vision_transformer.py``, ``timm/layers/mlp.py``,
``timm/layers/patch_embed.py``, ``timm/layers/pos_embed.py``):

- ``patch_embed.proj`` Conv2d(3, D, P, stride P) with bias;
- ``cls_token`` [1, 1, D], optional ``reg_token`` [1, R, D] (after the class token);
- ``pos_embed`` [1, prefix + grid², D], or [1, grid², D] when the position
  embedding skips the prefix tokens (timm's ``no_embed_class``: add, then concatenate);
- ``blocks.i``: pre-norm (``norm1``, ``norm2``, LayerNorm eps 1e-6), fused ``attn.qkv``
  (q, k, v in that order, heads inside each), ``attn.proj``, optional LayerScale
  ``ls1.gamma`` / ``ls2.gamma``, and ``mlp.fc1`` / ``mlp.fc2``: GELU MLP, or
  timm's ``SwiGLUPacked`` (``fc1`` holds both halves, ``silu(first) * second``,
  ``fc2`` takes half the width);
- ``norm`` (final LayerNorm); no head (``num_classes=0``).

The read-out is the class token (``cls``) or the class token concatenated with
the mean of the patch tokens, register tokens excluded (``cls+mean``, Virchow's).
Attention is written as explicit MatMul / Softmax / MatMul so the ONNX graph
has the pattern TensorRT quantizes and ONNX Runtime fuses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from torch import nn

MlpKind = Literal["gelu", "swiglu_packed"]
Readout = Literal["cls", "cls+mean"]
READOUTS: tuple[str, ...] = ("cls", "cls+mean")
#: timm's ViT LayerNorm epsilon
LAYER_NORM_EPS = 1e-6
#: the channel statistics these foundation models were trained with (ImageNet's), 0..1 scale
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VitConfig:
    """Shape of a ViT tile encoder; :data:`PRESETS` fixes it per family, the checkpoint's keys fill the rest."""

    name: str  #: preset name, e.g. ``vit-l16``
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    mlp: MlpKind = "gelu"
    tile_size: int = 224  #: input side in pixels (the position grid is tile_size // patch_size)
    mpp: float = 0.5  #: microns per pixel of the input
    layer_scale: bool = False  #: ``blocks.i.ls1.gamma`` / ``ls2.gamma`` present
    reg_tokens: int = 0  #: register tokens (``reg_token`` [1, R, D])
    no_embed_class: bool = False  #: ``pos_embed`` covers only the patches
    readout: Readout = "cls"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"readout {self.readout!r} is not one of {list(READOUTS)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"{self.name}: embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads")
        if self.tile_size % self.patch_size or self.tile_size < self.patch_size:
            raise ValueError(
                f"{self.name}: tile size {self.tile_size} must be a positive multiple of the patch size {self.patch_size}"
            )
        if self.mlp == "swiglu_packed" and self.mlp_hidden % 2:
            raise ValueError(f"{self.name}: packed SwiGLU needs an even fc1 width, got {self.mlp_hidden}")

    @property
    def grid(self) -> int:
        return self.tile_size // self.patch_size

    @property
    def prefix_tokens(self) -> int:
        return 1 + self.reg_tokens

    @property
    def pos_tokens(self) -> int:
        return self.grid**2 + (0 if self.no_embed_class else self.prefix_tokens)

    @property
    def mlp_hidden(self) -> int:
        """Width of ``mlp.fc1``'s output, as timm computes it: ``int(dim * mlp_ratio)``."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def output_dim(self) -> int:
        """Length of the embedding the encoder returns."""
        return self.embed_dim * (2 if self.readout == "cls+mean" else 1)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


#: the families the appliance knows; shape only (LayerScale, registers, pos-embed layout come from the checkpoint)
PRESETS: dict[str, VitConfig] = {
    c.name: c
    for c in (
        VitConfig("vit-s16", 16, 384, 12, 6, 4.0),
        VitConfig("vit-b16", 16, 768, 12, 12, 4.0),
        VitConfig("vit-l16", 16, 1024, 24, 16, 4.0),  # UNI (LayerScale)
        VitConfig("vit-h14-swiglu", 14, 1280, 32, 16, 5.3375, "swiglu_packed"),  # Virchow / Virchow2
        VitConfig("vit-g14", 14, 1536, 40, 24, 5.33334, "swiglu_packed"),  # Prov-GigaPath, H-optimus (dinov2 giant)
    )
}


def preset(name: str, **changes: object) -> VitConfig:
    """The preset ``name`` with ``changes`` applied (tile size, readout, LayerScale, registers, depth...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], **changes)  # type: ignore[arg-type]


class PatchEmbed(nn.Module):
    """timm's PatchEmbed: a PxP stride-P convolution, flattened to tokens [N, grid², D]."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (timm ``LayerScale``)."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm ``Mlp``), or packed SwiGLU (timm ``SwiGLUPacked``: silu(x1) * x2)."""

    def __init__(self, dim: int, hidden: int, kind: MlpKind) -> None:
        super().__init__()
        self.kind = kind
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden // 2 if kind == "swiglu_packed" else hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.kind == "swiglu_packed":
            x1, x2 = x.chunk(2, dim=-1)
            x = nn.functional.silu(x1) * x2
        else:
            x = nn.functional.gelu(x)
        return self.fc2(x)


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, config: VitConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, config.num_heads)
        self.ls1: nn.Module = LayerScale(dim) if config.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, config.mlp_hidden, config.mlp)
        self.ls2: nn.Module = LayerScale(dim) if config.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Normalized RGB tiles [N, 3, S, S] -> embeddings [N, D] (or [N, 2D] with ``cls+mean``)."""

    def __init__(self, config: VitConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        # parameters before sub-modules, in timm's order, so state_dict() lists keys as timm does
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if config.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, config.reg_tokens, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, config.pos_tokens, dim) * 0.02)
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def tokens(self, image: torch.Tensor) -> torch.Tensor:
        """All output tokens [N, prefix + grid², D] after the final norm."""
        x = self.patch_embed(image)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.config.reg_tokens:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        if self.config.no_embed_class:
            x = torch.cat([*prefix, x + self.pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.tokens(image)
        cls = x[:, 0]
        if self.config.readout == "cls":
            return cls
        return torch.cat([cls, x[:, self.config.prefix_tokens :].mean(dim=1)], dim=-1)


def resample_pos_embed(pos_embed: torch.Tensor, grid: int, prefix_tokens: int) -> torch.Tensor:
    """timm's ``resample_abs_pos_embed``: bicubic, antialiased, prefix tokens kept as they are."""
    tokens = pos_embed.shape[1] - prefix_tokens
    old = math.isqrt(tokens)
    if old * old != tokens:
        raise ValueError(f"pos_embed holds {tokens} patch positions, not a square grid")
    if old == grid:
        return pos_embed
    prefix, patches = pos_embed[:, :prefix_tokens], pos_embed[:, prefix_tokens:]
    dim = pos_embed.shape[-1]
    image = patches.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
    image = nn.functional.interpolate(image, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    resampled = image.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)
    return torch.cat([prefix, resampled], dim=1)


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "READOUTS", "VisionTransformer", "VitConfig", "preset",
    "resample_pos_embed",
]  # fmt: skip
