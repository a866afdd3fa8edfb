"""The additive angular margin (ArcFace, Deng et al. 2019) on cosine logits.

The target logit becomes s * cos(theta_y + m), the others stay s * cos(theta_j). Past
theta_y + m = pi, cos(theta_y + m) would rise again and reward a worse angle, so where
cos(theta_y) <= cos(pi - m) the target uses insightface's fallback (``easy_margin=False``)
cos(theta_y) - m * sin(pi - m), which keeps the target logit monotone in theta_y.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltray.losses.base import as_float

# sin(theta) = sqrt(max(1 - cos^2, SIN_EPS)) keeps the gradient finite at cos(theta) = +-1
SIN_EPS = 1e-12


def additive_angular_margin(cos: Tensor, target: Tensor, margin: float) -> Tensor:
    """cos(theta_j) [B, C] with the target column replaced by cos(theta_y + m) (or fallback)."""
    cos_y = cos.gather(1, target[:, None])
    sin_y = (1.0 - cos_y.square()).clamp_min(SIN_EPS).sqrt()
    shifted = cos_y * math.cos(margin) - sin_y * math.sin(margin)
    fallback = cos_y - margin * math.sin(math.pi - margin)
    target_logit = torch.where(cos_y > math.cos(math.pi - margin), shifted, fallback)
    return cos.scatter(1, target[:, None], target_logit)


class AngularMarginCE(nn.Module):
    """Cross-entropy on s * margin-adjusted cosines (+ an optional fixed logit offset).

    s is a fixed buffer, or, when ``learn_scale``, exp of a parameter ``log_scale`` initialised
    at log(``scale``): a learned scale stays positive whatever the optimiser does (the loop
    optimises ``crit.parameters()``). ``logit_offset`` [C] is added after scaling, at training
    only (the dr loss's prior correction tau * log prior).
    """

    def __init__(self, scale: float, learn_scale: bool, logit_offset: Tensor | None) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        s = torch.tensor(float(scale))
        self.learn_scale = learn_scale
        if learn_scale:
            self.log_scale = nn.Parameter(s.log())
        else:
            self.register_buffer("fixed_scale", s)
        self.register_buffer("logit_offset", logit_offset, persistent=False)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp() if self.learn_scale else self.fixed_scale

    def forward(self, cos: Tensor, target: Tensor, margin: float) -> Tensor:
        logits = self.scale * additive_angular_margin(as_float(cos), target, margin)
        if self.logit_offset is not None:
            logits = logits + self.logit_offset
        return F.cross_entropy(logits, target)
