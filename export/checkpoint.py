"""A site's foundation-model checkpoint: read it safely, match it to a ViT preset strictly, load it.

A checkpoint is a ``.safetensors`` file or a torch state dict read with
``torch.load(..., weights_only=True)`` (never arbitrary pickled objects), memory
mapped where the format allows so the weights are not held twice. Common wrapper
prefixes (``module.``, ``model.``) and a wrapping ``{"state_dict": ...}`` /
``{"model": ...}`` are removed. What varies between checkpoints of one preset is
read from the keys: LayerScale (``blocks.0.ls1.gamma``), register tokens
(``reg_token`` and its count), whether ``pos_embed`` covers the prefix tokens
(its length), and the checkpoint's position grid (resampled to the tile size,
as timm does). Anything else that does not match is refused with the list of
missing keys, unexpected keys and shape mismatches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from export.errors import ExportError
from export.models.vit import VisionTransformer, VitConfig, resample_pos_embed

logger = logging.getLogger(__name__)

#: prefixes that training wrappers (DataParallel, Lightning, hub wrappers) put before timm's names
STRIP_PREFIXES = ("module.", "model.")
#: keys under which a training script may nest the state dict
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
#: at most this many names per list in a refusal message
_LISTED = 20


class CheckpointRejected(ExportError):
    """The checkpoint cannot be read, or does not match the encoder; the message lists what is wrong."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of ``path`` by name, wrappers and prefixes removed (float32 on the CPU)."""
    if not path.is_file():
        raise CheckpointRejected(f"checkpoint {path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointRejected(f"{path.name} is not a readable .safetensors file: {exc}") from exc
    else:
        raw = _torch_load(path)
    state = _unwrap(raw, path)
    return {_strip(name): tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def _torch_load(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # legacy (non-zip) serialization cannot be memory-mapped
        if "mmap" not in str(exc):
            raise CheckpointRejected(f"{path.name} is not a torch state dict: {exc}") from exc
    except Exception as exc:  # weights_only refuses pickled objects with UnpicklingError and others
        raise CheckpointRejected(
            f"{path.name} is not a plain torch state dict (weights_only=True refused it): {exc}"
        ) from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointRejected(f"{path.name} is not a plain torch state dict: {exc}") from exc


def _unwrap(raw: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(raw, Mapping):
        for key in WRAPPER_KEYS:
            if key in raw and isinstance(raw[key], Mapping) and len(raw) <= 3:
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointRejected(f"{path.name} holds {type(raw).__name__}, not a state dict of named tensors")
    bad = [str(k) for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointRejected(f"{path.name}: entries {bad[:_LISTED]} are not named tensors")
    return dict(raw)


def _strip(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIP_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def config_from_state(state: Mapping[str, torch.Tensor], base: VitConfig) -> tuple[VitConfig, int]:
    """``base`` with LayerScale, registers and pos-embed layout read from the keys; and the checkpoint's grid."""
    layer_scale = "blocks.0.ls1.gamma" in state
    reg = state.get("reg_token")
    reg_tokens = int(reg.shape[1]) if reg is not None and reg.ndim == 3 else 0
    config = replace(base, layer_scale=layer_scale, reg_tokens=reg_tokens)
    pos = state.get("pos_embed")
    if pos is None or pos.ndim != 3:
        return config, config.grid  # reported as missing or mis-shaped by the key check
    positions, prefix = int(pos.shape[1]), 1 + reg_tokens
    if _square(positions - prefix):
        return replace(config, no_embed_class=False), math.isqrt(positions - prefix)
    if _square(positions):
        return replace(config, no_embed_class=True), math.isqrt(positions)
    raise CheckpointRejected(
        f"pos_embed has {positions} positions: neither a square patch grid plus the {prefix} prefix token(s) "
        f"nor a square grid alone (no_embed_class)"
    )


def check_keys(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointRejected listing missing keys, unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)}, {what} needs {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    problems = []
    for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if names:
            more = f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
            problems.append(f"{label} ({len(names)}): " + ", ".join(names[:_LISTED]) + more)
    if problems:
        raise CheckpointRejected(f"checkpoint does not match {what}:\n  " + "\n  ".join(problems))


def load_vit(path: Path, base: VitConfig) -> VisionTransformer:
    """The encoder of preset ``base`` holding the weights of ``path`` (strict; one copy of the weights)."""
    state = read_state_dict(path)
    config, grid = config_from_state(state, base)
    with torch.device("meta"):  # no random initialization of a model the checkpoint replaces
        model = VisionTransformer(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if "pos_embed" in state and grid != config.grid:
        prefix = 0 if config.no_embed_class else config.prefix_tokens
        logger.info("resampling pos_embed from a %dx%d to a %dx%d grid", grid, grid, config.grid, config.grid)
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], config.grid, prefix)
    check_keys(expected, state, f"encoder {config.name} ({describe(config)})")
    model.load_state_dict(state, strict=True, assign=True)
    logger.info("loaded %s from %s: %s", config.name, path.name, describe(config))
    return model.eval()


def describe(config: VitConfig) -> str:
    """One line naming what the checkpoint decided."""
    return (
        f"patch {config.patch_size}, width {config.embed_dim}, depth {config.depth}, heads {config.num_heads}, "
        f"mlp {config.mlp} {config.mlp_hidden}, LayerScale {'yes' if config.layer_scale else 'no'}, "
        f"{config.reg_tokens} register token(s), pos_embed {'patches only' if config.no_embed_class else 'with prefix'}, "
        f"tile {config.tile_size} px, readout {config.readout}"
    )


__all__ = ["CheckpointRejected", "check_keys", "config_from_state", "describe", "load_vit", "read_state_dict"]
