"""The seed paper's loss (Gao et al. 2025): margin, classifier uniformity, feature norm.

    L = L_margin(f, y) + lambda_u * L_uniform(W) + lambda_n * L_norm(f)

on a cosine head. L_margin is ArcFace's additive angular margin with scale s (fixed or
learned), the margin ramped linearly from 0 over ``margin_warmup_epochs``, and an optional
prior correction prior_tau * log prior on the training logits (prediction uses the plain
cosines). Each regulariser is off when its kind is "none" or its weight 0, and is then
neither computed nor reported. ``terms`` holds the unweighted, detached parts:
``margin_ce``, ``uniformity``, ``norm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from ltray.config import LossConfig, NormConfig, UniformityConfig
from ltray.errors import LtrayError
from ltray.losses.base import Criterion, LossOutput
from ltray.losses.feature_norm import FeatureNormLoss
from ltray.losses.margin import AngularMarginCE
from ltray.losses.uniformity import UNIFORMITY_KINDS, uniformity_loss
from ltray.models import ModelOutput


class DrLoss(Criterion):
    """Margin + lambda_u * uniformity + lambda_n * feature norm (the ``dr`` loss)."""

    head_kind = "cosine"
    output_kind = "scaled cosines"

    def predict_logits(self, out: ModelOutput) -> Tensor:
        """s * cos(theta_j): the training logits without the margin (or any prior offset)."""
        return self.margin_ce.scale * out.logits

    def __init__(
        self,
        class_counts: Sequence[int],
        margin: float,
        scale: float,
        learn_scale: bool = False,
        margin_warmup_epochs: float = 0.0,
        prior_tau: float = 0.0,
        uniformity: UniformityConfig | None = None,
        norm: NormConfig | None = None,
    ) -> None:
        super().__init__(class_counts)
        self.uniformity_cfg = uniformity or UniformityConfig(kind="none")
        self.norm_cfg = norm or NormConfig(kind="none")
        _check_dr_arguments(margin, prior_tau, self.uniformity_cfg, self.norm_cfg)
        self.margin = margin
        self.margin_warmup_epochs = margin_warmup_epochs
        offset = prior_tau * self.log_prior if prior_tau > 0 else None
        self.margin_ce = AngularMarginCE(scale, learn_scale, offset)
        self.use_uniformity = self.uniformity_cfg.kind != "none" and self.uniformity_cfg.weight > 0
        self.use_norm = self.norm_cfg.kind != "none" and self.norm_cfg.weight > 0
        self.feature_norm = (
            FeatureNormLoss(self.norm_cfg.kind, self.norm_cfg.radius) if self.use_norm else None
        )

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Sequence[int]) -> DrLoss:
        return cls(
            class_counts,
            margin=cfg.margin,
            scale=cfg.scale,
            learn_scale=cfg.learn_scale,
            margin_warmup_epochs=cfg.margin_warmup_epochs,
            prior_tau=cfg.prior_tau,
            uniformity=cfg.uniformity,
            norm=cfg.norm,
        )

    @property
    def current_margin(self) -> float:
        """m, ramped linearly from 0 over the warm-up epochs."""
        if self.margin_warmup_epochs <= 0:
            return self.margin
        return self.margin * min(1.0, self.epoch / self.margin_warmup_epochs)

    def loss(self, out: ModelOutput, target: Tensor, head: nn.Module) -> LossOutput:
        margin_ce = self.margin_ce(out.logits, target, self.current_margin)
        total = margin_ce
        terms = {"margin_ce": margin_ce.detach()}
        if self.use_uniformity:
            cfg = self.uniformity_cfg
            uniform = uniformity_loss(head.weight, cfg.kind, cfg.t, cfg.block_rows, cfg.gram_dtype)
            total = total + cfg.weight * uniform
            terms["uniformity"] = uniform.detach()
        if self.feature_norm is not None:
            norm = self.feature_norm(out.features)
            total = total + self.norm_cfg.weight * norm
            terms["norm"] = norm.detach()
        return LossOutput(total, terms)


def _check_dr_arguments(
    margin: float, prior_tau: float, uniformity: UniformityConfig, norm: NormConfig
) -> None:
    """What the config validates, checked again for losses built without it."""
    if uniformity.kind not in (*UNIFORMITY_KINDS, "none"):
        raise LtrayError(
            f"loss.uniformity.kind: unknown {uniformity.kind!r}; "
            f"valid: {', '.join((*UNIFORMITY_KINDS, 'none'))}"
        )
    if not 0.0 <= margin < math.pi / 2:
        raise LtrayError(f"loss.margin must be in [0, pi/2), got {margin}")
    for key, value in (
        ("loss.prior_tau", prior_tau),
        ("loss.uniformity.weight", uniformity.weight),
        ("loss.norm.weight", norm.weight),
    ):
        if value < 0:
            raise LtrayError(f"{key} must be >= 0, got {value}")
