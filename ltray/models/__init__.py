"""Models: a registry of backbones (``MODELS``), one of heads (``HEADS``), and ``build_model``.

A backbone maps images [B, 3, H, W] to features [B, feature_dim]; a head maps features to
class scores. Register a new backbone here and every model test runs on it.
"""

from __future__ import annotations

from torch import nn

from ltray.config import ModelConfig
from ltray.errors import LtrayError
from ltray.models.classifier import Classifier, ModelOutput
from ltray.models.heads import HEADS, CosineHead, LinearHead, build_head, tau_normalized
from ltray.models.resnet_cifar import resnet32
from ltray.models.torchvision_backbones import resnet10, resnet50, resnext50_32x4d
from ltray.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
MODELS.register("resnet32")(resnet32)
MODELS.register("resnet10")(resnet10)
MODELS.register("resnet50")(resnet50)
MODELS.register("resnext50_32x4d")(resnext50_32x4d)


def build_model(cfg: ModelConfig, num_classes: int, head: str | None = None) -> Classifier:
    """The backbone ``cfg.arch`` with the head ``head`` (default ``cfg.head``) on top.

    ``head`` is the head the loss trains, resolved by :func:`ltray.losses.head_for`, which
    refuses a ``cfg.head`` that contradicts it; without either, a linear head.
    """
    if num_classes < 2:
        raise LtrayError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    backbone = MODELS.get(cfg.arch)()
    kind = head or cfg.head or "linear"
    head_module = build_head(kind, backbone.feature_dim, num_classes, bias=cfg.bias)
    return Classifier(backbone, head_module)


__all__ = [
    "HEADS",
    "MODELS",
    "Classifier",
    "CosineHead",
    "LinearHead",
    "ModelOutput",
    "build_head",
    "build_model",
    "tau_normalized",
]
