"""A backbone and a head joined into the model the training loop runs."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


class ModelOutput(NamedTuple):
    """What a forward pass returns: the head's scores and the features it saw."""

    logits: Tensor  # [B, C]; cosines for a cosine head
    features: Tensor  # [B, D]


class Classifier(nn.Module):
    """images -> backbone -> features -> head -> logits; both halves stay reachable by name."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_dim: int = backbone.feature_dim

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.backbone(x)
        return ModelOutput(self.head(features), features)
