"""Gated-attention multiple-instance aggregator (Ilse, Tomczak, Welling, ICML 2018).

A bag of tile embeddings H [N, D] becomes a slide probability, an attention weight
per tile (softmax over the bag, sums to 1; the heat map) and a score per tile in
[0, 1]. The bag size N is dynamic.

:class:`PooledMIL` is what is exported: the same model with two more outputs
per tile, the attention logit and the classifier's logit, so the appliance can
score a bag of any size in chunks and combine them exactly (softmax over all
chunks' logits; the classifier is linear, so the logit of the pooled instance
is the attention-weighted mean of the tiles' logits). :data:`BAG_POOLING` is
the model-card entry that says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["BAG_POOLING", "POOLED_OUTPUTS", "GatedAttentionMIL", "MilConfig", "PooledMIL"]

#: model_card.bag_pooling of an exported :class:`PooledMIL` (engines.manifest checks it)
BAG_POOLING = {"attention_logits": "attention_logits", "tile_values": "tile_logits", "head": "sigmoid"}
#: output names of :class:`PooledMIL`, in order
POOLED_OUTPUTS = ("probability", "attention", "tile_scores", "attention_logits", "tile_logits")


@dataclass(frozen=True)
class MilConfig:
    """Architecture of the aggregator."""

    embed_dim: int = 128  #: D, must match the tile encoder
    hidden: int = 64  #: L in the paper, the size of the projected instance
    attention: int = 32  #: size of the gated-attention hidden layer

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class GatedAttentionMIL(nn.Module):
    """a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i))); slide = classifier(sum_i a_i h_i)."""

    def __init__(self, config: MilConfig = MilConfig()) -> None:
        super().__init__()
        self.config = config
        self.project = nn.Sequential(nn.Linear(config.embed_dim, config.hidden), nn.ReLU())
        self.attention_v = nn.Linear(config.hidden, config.attention)
        self.attention_u = nn.Linear(config.hidden, config.attention)
        self.attention_w = nn.Linear(config.attention, 1)
        self.classifier = nn.Linear(config.hidden, 1)

    def pooled(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return (probability [1], attention [N], tile_scores [N], attention_logits [N], tile_logits [N])."""
        h = self.project(embeddings)
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        logits = self.attention_w(gate).squeeze(-1)
        attention = torch.softmax(logits, dim=0)
        pooled = (attention.unsqueeze(-1) * h).sum(dim=0, keepdim=True)
        probability = torch.sigmoid(self.classifier(pooled)).reshape(1)
        tile_logits = self.classifier(h).squeeze(-1)
        return probability, attention, torch.sigmoid(tile_logits), logits, tile_logits

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (probability [1], attention [N], tile_scores [N])."""
        probability, attention, tile_scores, _, _ = self.pooled(embeddings)
        return probability, attention, tile_scores


class PooledMIL(nn.Module):
    """:class:`GatedAttentionMIL` with the per-tile outputs of :data:`POOLED_OUTPUTS` (for export)."""

    def __init__(self, mil: GatedAttentionMIL) -> None:
        super().__init__()
        self.mil = mil

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.mil.pooled(embeddings)
