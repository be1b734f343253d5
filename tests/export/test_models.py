"""Reference architectures: 4-D convolution as 3-D convolutions, gated attention, clinical vector."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from export.models import Conv4d, DceConfig, DceNet, GatedAttentionMIL, MilConfig, TileConfig, TileEncoder
from export.models.dce4d import clinical_vector


def test_conv4d_is_a_sum_of_3d_convolutions_over_temporal_offsets() -> None:
    torch.manual_seed(0)
    layer = Conv4d(2, 3, frames=4, temporal_kernel=3, stride=(1, 1, 1))
    x = torch.rand(2, 4, 2, 5, 6, 6)
    folded = torch.stack([torch.cat([x[:, t + k] for k in range(3)], dim=1) for t in range(2)], dim=1)
    got = layer.conv(folded.reshape(-1, 6, 5, 6, 6)).reshape(2, 2, 3, 5, 6, 6)
    for t in range(2):
        expected = sum(F.conv3d(x[:, t + k], w, padding=1) for k, w in enumerate(layer.temporal_weights()))
        assert torch.allclose(got[:, t], expected, atol=1e-5)


def test_conv4d_rejects_a_frame_count_it_was_not_built_for() -> None:
    layer = Conv4d(1, 2, frames=5, temporal_kernel=3, stride=(1, 1, 1))
    with pytest.raises(ValueError, match=r"expects \[N, 5, 1"):
        layer(torch.rand(1, 4, 1, 4, 4, 4))


def test_dce_net_output_is_a_probability_per_case() -> None:
    net = DceNet(DceConfig(width=2)).eval()
    with torch.no_grad():
        p = net(torch.rand(3, 5, 16, 64, 64), torch.rand(3, 10))
    assert p.shape == (3, 1) and bool(((p >= 0) & (p <= 1)).all())


def test_gated_attention_sums_to_one_over_the_bag() -> None:
    model = GatedAttentionMIL(MilConfig(embed_dim=8, hidden=4, attention=4)).eval()
    with torch.no_grad():
        probability, attention, scores = model(torch.rand(11, 8))
    assert probability.shape == (1,) and attention.shape == (11,) and scores.shape == (11,)
    assert float(attention.sum()) == pytest.approx(1.0, abs=1e-6)
    assert bool(((scores >= 0) & (scores <= 1)).all())


@pytest.mark.parametrize(("width", "depth", "size"), [(4, 1, 32), (8, 3, 64)])
def test_tile_encoder_width_and_depth_are_configurable(width: int, depth: int, size: int) -> None:
    encoder = TileEncoder(TileConfig(tile_size=size, width=width, depth=depth, embed_dim=5)).eval()
    with torch.no_grad():
        assert encoder(torch.rand(2, 3, size, size)).shape == (2, 5)


def test_clinical_vector_marks_missing_values() -> None:
    vector = clinical_vector({"age": 50.0, "er": 1.0, "her2": None, "ki67": 20.0, "grade": 3.0})
    assert vector == [0.5, 1.0, 0.0, 0.2, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="unknown clinical variables"):
        clinical_vector({"weight": 70.0})


def test_training_is_deterministic() -> None:
    """The same seed gives bit-identical weights (so the script reproduces any weights it made)."""
    import numpy as np

    from export.train import DemoSizes, _train_tile, seed_everything

    sizes = DemoSizes(tiles=32, tile_epochs=1, tile=TileConfig(tile_size=32, width=4, depth=1, embed_dim=4))
    states = []
    for _ in range(2):
        seed_everything(7)
        encoder, probe, _, _ = _train_tile(sizes, np.random.default_rng(7), lambda message: None)
        states.append({**encoder.state_dict(), **{f"probe.{k}": v for k, v in probe.state_dict().items()}})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
