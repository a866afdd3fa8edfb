"""Losses: the ``LOSSES`` registry (one entry per name in config.LOSS_NAMES) and ``build_loss``.

Every entry is ``(cfg: LossConfig, class_counts) -> Criterion``. The decoupled methods
``crt``, ``lws`` and ``tau_norm`` train their first stage jointly with the loss named by
``cfg.decoupled.stage1_loss`` (default ``ce``), so their entries return that loss; the second
stage is ``ltray.train.classifier_stage`` (crt, lws: images through the frozen backbone) or
``ltray.train.decoupled.tau_norm`` (tau chosen on the val split).
"""

from __future__ import annotations

from collections.abc import Sequence

from ltray.config import DECOUPLED_METHODS, LossConfig, ModelConfig
from ltray.errors import LtrayError
from ltray.losses.base import Criterion, LossOutput, check_class_counts
from ltray.losses.baselines import (
    ClassBalancedCE,
    CrossEntropy,
    FocalLoss,
    PriorAdjustedCE,
    WeightBalancing,
)
from ltray.losses.dr import DrLoss
from ltray.losses.ldam import LdamDrw
from ltray.registry import Registry

LOSSES: Registry[Criterion] = Registry("loss")
LOSSES.register("ce")(CrossEntropy.from_config)
LOSSES.register("focal")(FocalLoss.from_config)
LOSSES.register("class_balanced")(ClassBalancedCE.from_config)
LOSSES.register("ldam_drw")(LdamDrw.from_config)
LOSSES.register("balanced_softmax")(PriorAdjustedCE.balanced_softmax)
LOSSES.register("logit_adjustment")(PriorAdjustedCE.logit_adjustment)
LOSSES.register("weight_balancing")(WeightBalancing.from_config)
LOSSES.register("dr")(DrLoss.from_config)


def stage1_loss(cfg: LossConfig, class_counts: Sequence[int]) -> Criterion:
    """The joint first stage of crt / lws / tau_norm: ``cfg.decoupled.stage1_loss``.

    The second stage re-trains or rescales a linear head, so the stage-1 loss must use one.
    """
    name = cfg.decoupled.stage1_loss
    if name in DECOUPLED_METHODS:
        raise LtrayError(
            f"loss.decoupled.stage1_loss: {name!r} is itself a second stage; use a joint loss"
        )
    try:
        factory = LOSSES.get(name)
    except LtrayError as exc:
        raise LtrayError(f"loss.decoupled.stage1_loss: {exc}") from None
    crit = factory(cfg, class_counts)
    if crit.head_kind != "linear":
        raise LtrayError(
            f"loss.decoupled.stage1_loss: {name!r} trains a {crit.head_kind} head; "
            f"{cfg.name} needs a linear one"
        )
    return crit


for _method in DECOUPLED_METHODS:
    LOSSES.register(_method)(stage1_loss)


def head_for(loss: LossConfig, model: ModelConfig) -> str:
    """The classifier head the model gets: the one the loss trains (``dr`` and ``ldam_drw`` a
    cosine head, the others and the decoupled methods' first stage a linear one). A
    ``model.head`` that names another is refused, never silently replaced."""
    factory = LOSSES.get(loss.name)
    needed = getattr(getattr(factory, "__self__", None), "head_kind", "linear")
    if model.head is not None and model.head != needed:
        raise LtrayError(
            f"model.head is {model.head!r}, but loss {loss.name!r} trains a {needed} head; "
            f"drop model.head or set it to {needed!r}"
        )
    return needed


def build_loss(cfg: LossConfig, class_counts: Sequence[int]) -> Criterion:
    """The loss ``cfg.name`` for a training split with these per-class image counts."""
    counts = check_class_counts(class_counts)
    return LOSSES.get(cfg.name)(cfg, counts)


__all__ = ["LOSSES", "Criterion", "LossOutput", "build_loss", "head_for", "stage1_loss"]
