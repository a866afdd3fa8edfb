"""cRT and LWS as Kang et al. (ICLR 2020) ran them: a second stage on IMAGES, not cached features.

After the joint first stage the backbone is frozen (its weights and its batch-norm statistics:
it runs in eval mode), and the classifier alone is trained for ``loss.decoupled.epochs`` epochs
on augmented training images drawn class-balanced (a class uniformly, then one of its images),
in the same distributed loop as stage 1 (DDP over the head's parameters only):

    crt  the linear head is re-initialised (seeded) and re-trained
    lws  the head is kept and one scale per class is learned; the scales are then folded into
         its rows and bias, so the result is a plain linear head again

SGD with momentum 0.9, weight decay ``loss.decoupled.weight_decay`` (5e-4), lr
``loss.decoupled.lr`` (0.2) decaying to 0 with a cosine over all stage-2 steps, a global batch
of ``loss.decoupled.batch_size`` (512, split over the workers): Kang et al.'s released configs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ltray.config import DecoupledConfig
from ltray.errors import LtrayError
from ltray.models.heads import LinearHead

MOMENTUM = 0.9
RETRAINED = ("crt", "lws")


class HeadOnly(nn.Module):
    """Frozen backbone (eval mode, no gradient) under a trainable head (and LWS's scales)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, scales: nn.Parameter | None) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.head = head
        self.scales = scales

    def train(self, mode: bool = True) -> HeadOnly:
        super().train(mode)
        self.backbone.eval()  # its batch-norm statistics stay those of stage 1
        return self

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.backbone(images)
        logits = self.head(features.float())
        return logits * self.scales if self.scales is not None else logits


def retrain_classifier(
    method: str,
    model: nn.Module,
    epochs_of_batches: Callable[[int], Iterable[dict[str, Tensor]]],
    steps_per_epoch: int,
    normalize: Callable[[Tensor], Tensor],
    placement: Any,
    cfg: DecoupledConfig,
    seed: int,
    distributed: bool,
) -> tuple[LinearHead, dict[str, float]]:
    """The new head of ``model`` after stage 2 (``model`` itself is left as it was), and the
    last epoch's mean loss. ``epochs_of_batches(e)`` yields stage-2 epoch ``e``'s batches."""
    if method not in RETRAINED:
        raise LtrayError(f"unknown classifier re-training {method!r}; valid: crt, lws")
    if not isinstance(model.head, LinearHead):
        raise LtrayError(
            f"{method} needs a linear head from stage 1, got {type(model.head).__name__} "
            "(loss.decoupled.stage1_loss must train a linear head)"
        )
    if cfg.epochs < 1:
        raise LtrayError(
            f"loss.decoupled.epochs: {method} needs at least 1 epoch, got {cfg.epochs}"
        )
    device = placement.device
    head = copy.deepcopy(model.head).float().to(device)
    scales = None
    if method == "crt":
        generator = torch.Generator().manual_seed(seed)
        head.reset_parameters(generator=generator)
        trained = list(head.parameters())
    else:
        head.requires_grad_(False)
        scales = nn.Parameter(torch.ones(head.out_features, device=device))
        trained = [scales]
    backbone = copy.deepcopy(model.backbone)
    stage: nn.Module = HeadOnly(backbone, head, scales)
    if distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        stage = DistributedDataParallel(stage, device_ids=device_ids)
    optimizer = torch.optim.SGD(
        trained, lr=cfg.lr, momentum=MOMENTUM, weight_decay=cfg.weight_decay
    )
    total_steps = max(cfg.epochs * steps_per_epoch, 1)
    done = 0
    last_loss = math.nan
    stage.train()
    for epoch in range(cfg.epochs):
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = torch.zeros((), dtype=torch.float64, device=device)
        for batch in epochs_of_batches(epoch):
            for group in optimizer.param_groups:  # cosine to 0 over all stage-2 steps
                group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * done / total_steps))
            labels = batch["label"].to(device, non_blocking=True)
            with placement.autocast():
                logits = stage(normalize(batch["image"]))
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            loss_sum += loss.detach().double() * len(labels)
            seen += len(labels)
        sums = torch.stack([loss_sum, seen])
        if distributed:
            dist.all_reduce(sums)
        last_loss = (sums[0] / sums[1].clamp_min(1.0)).item()
    with torch.no_grad():
        if scales is not None:  # LWS: fold the scales into the rows and the bias
            head.weight.mul_(scales[:, None])
            if head.bias is not None:
                head.bias.mul_(scales)
    head.requires_grad_(True).eval()
    return head, {"train_loss": last_loss, "epochs": float(cfg.epochs)}
