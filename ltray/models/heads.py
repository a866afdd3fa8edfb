"""Classifier heads: linear, cosine, and tau-normalisation of a trained linear head.

Every head maps features [B, D] to per-class scores [B, C] and exposes its class rows as
``weight`` [C, D], which the uniformity loss, the decomposition and MaxNorm read. ``kind`` says
which logits it returns, so a loss can check it was given the head it needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltray.errors import LtrayError
from ltray.registry import Registry

HEADS: Registry[nn.Module] = Registry("head")


@HEADS.register("linear")
class LinearHead(nn.Linear):
    """z_j = w_j . f + b_j; the standard classifier."""

    kind = "linear"

    def __init__(self, feature_dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(feature_dim, num_classes, bias=bias)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """nn.Linear's initialisation, reproducible from ``generator`` (used by cRT)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound, generator=generator)


@HEADS.register("cosine")
class CosineHead(nn.Module):
    """cos(theta_j) between the feature and row j, both normalised, in fp32; the loss applies
    the scale.

    ``bias`` is accepted so that every head has the same constructor, and ignored: a bias
    would break the angular reading of the logits.
    """

    kind = "cosine"

    def __init__(self, feature_dim: int, num_classes: int, bias: bool = False) -> None:
        super().__init__()
        del bias  # a cosine head never has one
        self.in_features = feature_dim
        self.out_features = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, feature_dim))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)

    def forward(self, features: Tensor) -> Tensor:
        """In fp32 even under autocast, as ArcFace and LDAM code do: in bf16 the cosine would be
        rounded to 8 bits before the angular margin (about 0.4 degrees near cos = 0.9)."""
        with torch.autocast(features.device.type, enabled=False):
            unit_features = F.normalize(features.float(), dim=1)
            return F.linear(unit_features, F.normalize(self.weight.float(), dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def tau_normalized(head: nn.Module, tau: float) -> LinearHead:
    """A copy of a linear head with each row w_j rescaled by 1 / ||w_j||^tau (Kang et al. 2020).

    tau = 1 gives unit rows. The bias, if any, is set to zero: as in Kang et al.'s code the
    scores are the rescaled rows' dot products only (a jointly learned bias carries the
    training prior that tau-norm is meant to remove), so tau = 0 is the head without bias.
    """
    if not isinstance(head, LinearHead):
        raise LtrayError(f"tau-norm needs a linear head, got {type(head).__name__}")
    if tau < 0:
        raise LtrayError(f"tau-norm: tau must be >= 0, got {tau}")
    out = LinearHead(head.in_features, head.out_features, bias=head.bias is not None)
    out = out.to(device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        norms = head.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out.weight.copy_(head.weight / norms.pow(tau))
        if out.bias is not None:
            out.bias.zero_()
    return out


def build_head(name: str, feature_dim: int, num_classes: int, bias: bool = True) -> nn.Module:
    """The head registered as ``name``; an unknown name lists the valid ones."""
    return HEADS.get(name)(feature_dim, num_classes, bias=bias)
