"""ViT tile encoders: timm's state-dict layout per preset, strict checkpoint loading, ONNX parity.

The expected keys and shapes are written down here from timm's published layout
(``timm/models/vision_transformer.py`` ``VisionTransformer`` / ``Block``,
``timm/layers/attention.py`` ``Attention``, ``timm/layers/mlp.py`` ``Mlp`` and
``GluMlp`` as ``SwiGLUPacked``, ``timm/layers/patch_embed.py``,
``timm/layers/layer_scale.py``), independently of our definition: state_dict
order is the module's own parameters (cls_token, reg_token, pos_embed) then its
children (patch_embed, blocks, norm), each block norm1, attn.qkv, attn.proj,
ls1, norm2, mlp.fc1, mlp.fc2, ls2.

Full-depth key lists and shapes are checked for every preset (on the meta device,
no memory); weight loading and ONNX parity use the preset's real widths with the
depth truncated to 2 blocks and a 4x4 patch grid, so the test stays cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.checkpoint import CheckpointRejected, load_vit, read_state_dict
from export.models.vit import PRESETS, VisionTransformer, preset
from export.onnx_export import export_onnx

#: preset -> (patch, width D, depth, heads, fc1 out, fc2 in) as timm builds them (hidden = int(D * mlp_ratio))
TIMM_SHAPES = {
    "vit-s16": (16, 384, 12, 6, 1536, 1536),  # vit_small_patch16_224
    "vit-b16": (16, 768, 12, 12, 3072, 3072),  # vit_base_patch16_224
    "vit-l16": (16, 1024, 24, 16, 4096, 4096),  # vit_large_patch16_224 (UNI)
    "vit-h14-swiglu": (14, 1280, 32, 16, 6832, 3416),  # vit_huge_patch14_224, mlp_ratio 5.3375, SwiGLUPacked (Virchow)
    "vit-g14": (14, 1536, 40, 24, 8192, 4096),  # vit_giant_patch14_dinov2, mlp_ratio 2.66667*2, SwiGLUPacked
}


def timm_layout(
    name: str, grid: int = 14, depth: int | None = None, layer_scale: bool = False, reg: int = 0,
    no_embed_class: bool = False,
) -> dict[str, tuple[int, ...]]:
    """timm's state-dict keys and shapes for ``name`` (num_classes=0, qkv_bias=True, final norm)."""
    patch, d, full_depth, _, fc1, fc2 = TIMM_SHAPES[name]
    keys: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, d)}
    if reg:
        keys["reg_token"] = (1, reg, d)
    keys["pos_embed"] = (1, grid * grid + (0 if no_embed_class else 1 + reg), d)
    keys["patch_embed.proj.weight"] = (d, 3, patch, patch)
    keys["patch_embed.proj.bias"] = (d,)
    for i in range(full_depth if depth is None else depth):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,),
                     b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                     b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,)})  # fmt: skip
        if layer_scale:
            keys[b + "ls1.gamma"] = (d,)
        keys.update({b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                     b + "mlp.fc1.weight": (fc1, d), b + "mlp.fc1.bias": (fc1,),
                     b + "mlp.fc2.weight": (d, fc2), b + "mlp.fc2.bias": (d,)})  # fmt: skip
        if layer_scale:
            keys[b + "ls2.gamma"] = (d,)
    keys["norm.weight"] = (d,)
    keys["norm.bias"] = (d,)
    return keys


VARIANTS = [  # (preset, LayerScale, registers, no_embed_class): the published checkpoints' combinations
    ("vit-s16", False, 0, False),
    ("vit-b16", False, 0, False),
    ("vit-l16", True, 0, False),  # UNI
    ("vit-h14-swiglu", True, 4, False),  # Virchow2
    ("vit-g14", True, 4, True),  # H-optimus-0 (vit_giant_patch14_reg4_dinov2)
]


@pytest.mark.parametrize(("name", "ls", "reg", "nec"), VARIANTS)
def test_full_depth_keys_and_shapes_are_timms(name: str, ls: bool, reg: int, nec: bool) -> None:
    config = preset(name, layer_scale=ls, reg_tokens=reg, no_embed_class=nec)
    with torch.device("meta"):
        model = VisionTransformer(config)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == list(timm_layout(name, 224 // config.patch_size, None, ls, reg, nec).items())


def _random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in layout.items()}
    for k in state:
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            state[k] += 1.0
    return state


def _save(state: dict[str, torch.Tensor], path: Path, prefix: str = "") -> Path:
    named = {prefix + k: v.contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(named, str(path))
    else:
        torch.save(named, path)
    return path


@pytest.mark.slow  # exports every ViT preset
@pytest.mark.parametrize(("name", "ls", "reg", "nec"), VARIANTS)
def test_truncated_preset_loads_strictly_and_exports_within_1e4(
    name: str, ls: bool, reg: int, nec: bool, tmp_path: Path
) -> None:
    patch = TIMM_SHAPES[name][0]
    layout = timm_layout(name, grid=4, depth=2, layer_scale=ls, reg=reg, no_embed_class=nec)
    state = _random_state(layout)
    readout = "cls+mean" if reg else "cls"
    suffix = ".safetensors" if reg else ".pt"
    path = _save(state, tmp_path / f"ckpt{suffix}", prefix="module.")
    model = load_vit(path, preset(name, depth=2, tile_size=4 * patch, readout=readout))
    assert (model.config.layer_scale, model.config.reg_tokens, model.config.no_embed_class) == (ls, reg, nec)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    image = torch.randn(2, 3, 4 * patch, 4 * patch, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(image)
    assert out.shape == (2, model.config.output_dim)
    exported = export_onnx(model, {"image": image}, ("embedding",), {"image": {0: "batch"}}, tmp_path / "m.onnx")
    assert exported.parity_max_abs <= 1e-4


def test_readout_cls_mean_excludes_register_tokens(tmp_path: Path) -> None:
    layout = timm_layout("vit-s16", grid=2, depth=1, reg=4)
    model = load_vit(_save(_random_state(layout), tmp_path / "c.pt"), preset("vit-s16", depth=1, tile_size=32, readout="cls+mean"))
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = model.tokens(image)
        out = model(image)
    assert torch.allclose(out[:, :384], tokens[:, 0])
    assert torch.allclose(out[:, 384:], tokens[:, 5:].mean(dim=1))


def test_pos_embed_resampled_to_another_tile_size(tmp_path: Path) -> None:
    """A 224 px checkpoint (14x14 grid) runs at 112 px: timm's bicubic antialiased resampling, prefix kept."""
    layout = timm_layout("vit-s16", grid=14, depth=1)
    state = _random_state(layout)
    model = load_vit(_save(state, tmp_path / "c.pt"), preset("vit-s16", depth=1, tile_size=112))
    assert model.pos_embed.shape == (1, 1 + 49, 384)
    assert torch.equal(model.pos_embed[:, 0], state["pos_embed"][:, 0])
    grid = state["pos_embed"][:, 1:].reshape(1, 14, 14, 384).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(7, 7), mode="bicubic", antialias=True)
    assert torch.allclose(model.pos_embed[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 49, 384))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("blocks.1.attn.proj.bias"), r"missing keys \(1\): blocks\.1\.attn\.proj\.bias"),
        (lambda s: s.__setitem__("head.weight", torch.zeros(2, 384)), r"unexpected keys \(1\): head\.weight"),
        (lambda s: s.__setitem__("blocks.0.mlp.fc1.weight", torch.zeros(1000, 384)),
         r"shape mismatches \(1\): blocks\.0\.mlp\.fc1\.weight: checkpoint \(1000, 384\), .* needs \(1536, 384\)"),
        (lambda s: s.__setitem__("blocks.0.ls1.gamma", torch.ones(384)), r"missing keys \(3\): blocks\.0\.ls2\.gamma"),
    ],
)
def test_checkpoint_that_does_not_match_is_refused_naming_the_key(change: object, message: str, tmp_path: Path) -> None:
    state = _random_state(timm_layout("vit-s16", grid=2, depth=2))
    change(state)  # type: ignore[operator]
    with pytest.raises(CheckpointRejected, match=message):
        load_vit(_save(state, tmp_path / "c.safetensors"), preset("vit-s16", depth=2, tile_size=32))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"cls_token": torch.zeros(1), "config": np.dtype("float32")}, path)
    with pytest.raises(CheckpointRejected, match="weights_only"):
        read_state_dict(path)


def test_wrapped_state_dict_and_model_prefix_are_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"state_dict": {"model.cls_token": torch.zeros(1, 1, 4)}, "epoch": 3}, path)
    assert list(read_state_dict(path)) == ["cls_token"]


def test_unknown_preset_named() -> None:
    with pytest.raises(ValueError, match=r"unknown encoder 'vit-x'.*vit-b16"):
        preset("vit-x")
    assert sorted(PRESETS) == ["vit-b16", "vit-g14", "vit-h14-swiglu", "vit-l16", "vit-s16"]


def test_large_encoder_export_moves_the_weights_file_instead_of_loading_it(tmp_path: Path) -> None:
    """The path a > 1.5 GB encoder takes (forced here on a small one): weights stay in model.onnx.data."""
    from export.onnx_export import model_files

    model = VisionTransformer(preset("vit-s16", depth=1, tile_size=32)).eval()
    image = torch.randn(2, 3, 32, 32)
    out = tmp_path / "enc" / "model.onnx"
    exported = export_onnx(model, {"image": image}, ("embedding",), {"image": {0: "batch"}}, out, external_data=True)
    assert exported.parity_max_abs <= 1e-4
    assert [p.name for p in model_files(out)] == ["model.onnx", "model.onnx.data"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert out.stat().st_size < 100_000 < (out.parent / "model.onnx.data").stat().st_size


def test_demo_vit_trains_from_random_initialization() -> None:
    """The demo ViT (asked for with ``--encoder vit-s16`` and no checkpoint) learns on synthetic tiles."""
    from export.train import train_demo_vit

    messages: list[str] = []
    config = preset("vit-s16", depth=1, tile_size=32)
    torch.manual_seed(7)  # train_demo_vit seeds torch with its seed before it builds the model
    before = VisionTransformer(config).state_dict()["blocks.0.attn.qkv.weight"].clone()
    model = train_demo_vit(config, tiles=32, epochs=2, seed=7, progress=messages.append)
    torch.use_deterministic_algorithms(False)
    assert not model.training and len(messages) == 2 and "demo model, not for clinical use" in messages[-1]
    losses = [float(m.split("loss ")[1].split()[0]) for m in messages]
    assert all(np.isfinite(losses)) and not torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], before)
