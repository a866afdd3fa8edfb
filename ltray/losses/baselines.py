"""The softmax baselines: cross-entropy and the re-weighting / logit-adjusting variants.

Each takes the class counts of the training split; all compute in fp32 and return the
batch mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltray.config import LossConfig
from ltray.losses.base import (
    Criterion,
    LossOutput,
    as_float,
    effective_number_weights,
    unwrap,
)
from ltray.models import ModelOutput


class CrossEntropy(Criterion):
    """Plain softmax cross-entropy."""

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Sequence[int]) -> CrossEntropy:
        return cls(class_counts)

    def loss(self, out: ModelOutput, target: Tensor, head: nn.Module) -> LossOutput:
        ce = F.cross_entropy(as_float(out.logits), target)
        return LossOutput(ce, {"ce": ce.detach()})


class FocalLoss(Criterion):
    """Lin et al. 2017: -(1 - p_y)^gamma log p_y, no alpha; gamma = 0 is cross-entropy."""

    def __init__(self, class_counts: Sequence[int], gamma: float) -> None:
        super().__init__(class_counts)
        self.gamma = gamma

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Sequence[int]) -> FocalLoss:
        return cls(class_counts, cfg.gamma)

    def loss(self, out: ModelOutput, target: Tensor, head: nn.Module) -> LossOutput:
        log_p = F.log_softmax(as_float(out.logits), dim=1).gather(1, target[:, None]).squeeze(1)
        focal = (-((1.0 - log_p.exp()).pow(self.gamma)) * log_p).mean()
        return LossOutput(focal, {"focal": focal.detach()})


class ClassBalancedCE(Criterion):
    """Cui et al. 2019: cross-entropy with the effective-number weight of the true class.

    The batch loss is mean_i(w_{y_i} * ce_i), as in the paper's code (TensorFlow's sum over
    non-zero weights), not PyTorch's weight-normalised mean.
    """

    def __init__(self, class_counts: Sequence[int], beta: float) -> None:
        super().__init__(class_counts)
        self.register_buffer(
            "class_weights", effective_number_weights(class_counts, beta), persistent=False
        )

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Sequence[int]) -> ClassBalancedCE:
        return cls(class_counts, cfg.beta)

    def loss(self, out: ModelOutput, target: Tensor, head: nn.Module) -> LossOutput:
        ce = F.cross_entropy(as_float(out.logits), target, reduction="none")
        cb = (self.class_weights[target] * ce).mean()
        return LossOutput(cb, {"class_balanced_ce": cb.detach()})


class PriorAdjustedCE(Criterion):
    """Cross-entropy on z + tau * log prior at training; prediction uses the plain logits.

    tau = 1 is balanced softmax (Ren et al. 2020); free tau is the loss form of logit
    adjustment (Menon et al. 2021).
    """

    def __init__(self, class_counts: Sequence[int], tau: float, term: str) -> None:
        super().__init__(class_counts)
        self.tau = tau
        self.term = term

    @classmethod
    def balanced_softmax(cls, cfg: LossConfig, class_counts: Sequence[int]) -> PriorAdjustedCE:
        return cls(class_counts, 1.0, "balanced_softmax")

    @classmethod
    def logit_adjustment(cls, cfg: LossConfig, class_counts: Sequence[int]) -> PriorAdjustedCE:
        return cls(class_counts, cfg.tau, "logit_adjusted_ce")

    def loss(self, out: ModelOutput, target: Tensor, head: nn.Module) -> LossOutput:
        ce = F.cross_entropy(as_float(out.logits) + self.tau * self.log_prior, target)
        return LossOutput(ce, {self.term: ce.detach()})


class WeightBalancing(CrossEntropy):
    """Alshammari et al. 2022, stage 1: cross-entropy, the job's (high) weight decay and,
    when ``max_norm`` is set, per-class MaxNorm: after every optimiser step, each classifier
    row whose norm exceeds it is scaled back onto the ball (projected gradient descent); the
    bias is not constrained. Stage 2 is :mod:`ltray.train.classifier_stage`."""

    def __init__(self, class_counts: Sequence[int], max_norm: float | None) -> None:
        super().__init__(class_counts)
        self.max_norm = max_norm

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Sequence[int]) -> WeightBalancing:
        return cls(class_counts, cfg.max_norm)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        if self.max_norm is None:
            return
        weight = unwrap(model).head.weight
        norms = weight.norm(dim=1, keepdim=True)
        weight.mul_((self.max_norm / norms.clamp_min(1e-12)).clamp(max=1.0))
