"""LDAM with deferred re-weighting (Cao et al. 2019), as in the authors' code.

Class margins m_c = C' / n_c^(1/4), with C' chosen so the largest margin is ``max_margin``;
the loss is cross-entropy on s * (z - m_y at the target). Like the authors' ResNet-32 it runs
on a cosine head (their ``NormedLinear``), which is what the scale s = 30 is meant for. From
``drw_epoch`` on, the cross-entropy is weighted by effective-number weights (beta
``drw_beta``) with PyTorch's weighted mean; before, all weights are 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltray.config import LossConfig
from ltray.losses.base import Criterion, LossOutput, as_float, effective_number_weights
from ltray.models import ModelOutput


def ldam_margins(class_counts: Sequence[int], max_margin: float) -> Tensor:
    """m_c proportional to n_c^(-1/4), the largest (rarest class) equal to ``max_margin``."""
    counts = torch.tensor(list(class_counts), dtype=torch.float64)
    margins = counts.pow(-0.25)
    return (margins * (max_margin / margins.max())).float()


class LdamDrw(Criterion):
    """Label-distribution-aware margin loss, re-weighted from ``drw_epoch`` on."""

    head_kind = "cosine"
    output_kind = "scaled cosines"

    def predict_logits(self, out: ModelOutput) -> Tensor:
        """s * cos(theta_j): the training logits without the margin (or any prior offset)."""
        return self.scale * out.logits

    def __init__(
        self,
        class_counts: Sequence[int],
        max_margin: float,
        scale: float,
        drw_epoch: float,
        drw_beta: float,
    ) -> None:
        super().__init__(class_counts)
        self.scale = scale
        self.drw_epoch = drw_epoch
        self.register_buffer(
            "margins", ldam_margins(self.class_counts, max_margin), persistent=False
        )
        self.register_buffer(
            "drw_weights", effective_number_weights(self.class_counts, drw_beta), persistent=False
        )

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Sequence[int]) -> LdamDrw:
        return cls(class_counts, cfg.ldam_max_margin, cfg.ldam_scale, cfg.drw_epoch, cfg.drw_beta)

    def class_weights(self) -> Tensor | None:
        """The per-class cross-entropy weights now: None (all 1) before ``drw_epoch``."""
        return self.drw_weights if self.epoch >= self.drw_epoch else None

    def loss(self, out: ModelOutput, target: Tensor, head: nn.Module) -> LossOutput:
        logits = as_float(out.logits)
        margins = self.margins.to(logits.dtype)[target][:, None]
        shifted = logits.scatter_add(1, target[:, None], -margins)
        weight = self.class_weights()
        weight = None if weight is None else weight.to(logits.dtype)
        ldam = F.cross_entropy(self.scale * shifted, target, weight=weight)
        return LossOutput(ldam, {"ldam": ldam.detach()})
