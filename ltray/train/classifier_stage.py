"""The classifier-only second stage, on IMAGES through the frozen backbone, as the authors ran it.

After the joint first stage the backbone is frozen (its weights and its batch-norm statistics:
it runs in eval mode), and the classifier alone is trained for ``loss.decoupled.epochs`` epochs
on augmented training images in the same distributed loop as stage 1 (DDP over the head's
parameters only), SGD with momentum 0.9, lr ``loss.decoupled.lr`` decaying to 0 with a cosine
over all stage-2 steps, weight decay ``loss.decoupled.weight_decay``, a global batch of
``loss.decoupled.batch_size`` split over the workers:

    crt               Kang et al. 2020: the linear head is re-initialised (seeded) and
                      re-trained with cross-entropy on class-balanced batches
    lws               Kang et al. 2020: the head is kept and one scale per class is learned on
                      class-balanced batches; the scales are folded into its rows and bias
    weight_balancing  Alshammari et al. 2022: the head is fine-tuned with the class-balanced
                      loss (cross-entropy weighted by effective numbers, ``loss.beta``) on
                      instance-sampled batches, under MaxNorm: after every step, rows longer
                      than min + ``max_norm_ratio`` x (max - min) of the stage-1 row norms are
                      projected back onto that radius (the bias is free)

Kang et al.'s released configs: 10 epochs, lr 0.2, weight decay 5e-4, batch 512 (the
defaults); Alshammari et al.'s CIFAR-LT: 10 epochs, lr 0.01, weight decay 0.1, batch 64,
MaxNorm ratio 0.1 (jobs/weight_balancing_cifar10_lt.yaml)."""

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
RETRAINED = ("crt", "lws", "weight_balancing")
SAMPLER = {"crt": "class_balanced", "lws": "class_balanced", "weight_balancing": "plain"}


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
    class_weights: Tensor | None = None,
) -> tuple[LinearHead, dict[str, float]]:
    """The new head of ``model`` after stage 2 (``model`` itself is left as it was), and the
    last epoch's mean loss. ``epochs_of_batches(e)`` yields stage-2 epoch ``e``'s batches
    (drawn as ``SAMPLER[method]`` says); ``class_weights`` weight the cross-entropy
    (weight_balancing's class-balanced loss)."""
    if method not in RETRAINED:
        raise LtrayError(
            f"unknown classifier re-training {method!r}; valid: {', '.join(RETRAINED)}"
        )
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
    radius = None
    if method == "crt":
        generator = torch.Generator().manual_seed(seed)
        head.reset_parameters(generator=generator)
        trained = list(head.parameters())
    elif method == "lws":
        head.requires_grad_(False)
        scales = nn.Parameter(torch.ones(head.out_features, device=device))
        trained = [scales]
    else:  # weight_balancing: fine-tune the stage-1 head under MaxNorm
        norms = head.weight.detach().norm(dim=1)
        radius = norms.min() + cfg.max_norm_ratio * (norms.max() - norms.min())
        trained = list(head.parameters())
    weights = class_weights.to(device) if class_weights is not None else None
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
            loss = F.cross_entropy(logits.float(), labels, weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if radius is not None:
                project_rows(head.weight, radius)
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
    info = {"train_loss": last_loss, "epochs": float(cfg.epochs)}
    if radius is not None:
        info["max_norm_radius"] = float(radius)
    return head, info


@torch.no_grad()
def project_rows(weight: Tensor, radius: Tensor) -> None:
    """MaxNorm by projected gradient descent: rows longer than ``radius`` scaled onto it."""
    norms = weight.norm(dim=1, keepdim=True)
    weight.mul_((radius / norms.clamp_min(1e-12)).clamp(max=1.0))
