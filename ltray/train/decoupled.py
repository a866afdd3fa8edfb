"""The decoupled second stage (Kang et al. 2020) on features of a frozen backbone.

Pure tensors in, a head out; no data loaders. Deterministic given ``seed``: every random
draw (re-initialisation, class-balanced sampling) comes from one generator seeded with it.

    crt       re-initialise the linear head and re-train it with class-balanced sampling
    lws       learn one scale per class on the frozen head (class-balanced sampling), then
              fold the scales into its rows and bias
    tau_norm  rescale rows by 1 / ||w_j||^tau and drop the bias (models.tau_normalized),
              tau as given (``cfg.tau``) or chosen from ``cfg.tau_grid`` by top-1 accuracy on
              the VALIDATION split's features (ties: the first in the grid); never on training
              features (after a long stage 1 nearly all are right for any tau) nor on test

crt and lws train with SGD (momentum 0.9, weight decay ``cfg.weight_decay`` = 5e-4 by
default), lr ``cfg.lr`` with cosine decay to 0 over ``cfg.epochs`` epochs of N samples, in
batches of ``cfg.batch_size`` (512 by default), as in Kang et al.'s released configs.
Class-balanced sampling draws a class uniformly, then an image of it uniformly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ltray.config import DECOUPLED_METHODS, DecoupledConfig
from ltray.errors import LtrayError
from ltray.models.heads import LinearHead, tau_normalized

MOMENTUM = 0.9
EVAL_CHUNK = 4096


def run_decoupled(
    method: str,
    head: nn.Module,
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    class_counts: Sequence[int],
    cfg: DecoupledConfig,
    seed: int,
) -> tuple[nn.Module, dict]:
    """The second stage ``method`` on the stage-1 ``head``; returns (new head, what it chose).

    The input head is left untouched. ``info`` always has ``val_acc`` (top-1 of the returned
    head on the validation features) and the method's own choices (``tau``, ``scales``).
    """
    if method not in _METHODS:
        raise LtrayError(f"unknown decoupled method {method!r}; valid: {', '.join(_METHODS)}")
    if not isinstance(head, LinearHead):
        raise LtrayError(
            f"{method} needs a linear head from stage 1, got {type(head).__name__} "
            "(loss.decoupled.stage1_loss must train a linear head)"
        )
    if len(class_counts) != head.out_features:
        raise LtrayError(
            f"{method}: {len(class_counts)} class counts for a head of {head.out_features} classes"
        )
    generator = torch.Generator().manual_seed(seed)
    train_features = train_features.detach().float()
    val_features = val_features.detach().float()
    train_labels = train_labels.to(train_features.device)
    val_labels = val_labels.to(val_features.device)
    new_head, info = _METHODS[method](
        head, train_features, train_labels, val_features, val_labels, cfg, generator
    )
    info["val_acc"] = accuracy(new_head, val_features, val_labels)
    return new_head, info


def accuracy(head: nn.Module, features: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of ``head`` on features, in chunks; NaN without samples."""
    if len(labels) == 0:
        return math.nan
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), EVAL_CHUNK):
            logits = head(features[start : start + EVAL_CHUNK].float())
            correct += (logits.argmax(1) == labels[start : start + EVAL_CHUNK]).sum().item()
    return correct / len(labels)


def class_balanced_batches(
    labels: Tensor, num_samples: int, batch_size: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """Index batches: a class drawn uniformly (among those present), then one of its samples."""
    labels_cpu = labels.cpu()
    order = torch.argsort(labels_cpu, stable=True)
    classes, counts = torch.unique_consecutive(labels_cpu[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    for begin in range(0, num_samples, batch_size):
        size = min(batch_size, num_samples - begin)
        which = torch.randint(len(classes), (size,), generator=generator)
        offset = (torch.rand(size, generator=generator) * counts[which]).long()
        yield order[starts[which] + offset].to(labels.device)


def _train(
    params: list[nn.Parameter],
    logits_of: Callable[[Tensor], Tensor],
    features: Tensor,
    labels: Tensor,
    cfg: DecoupledConfig,
    generator: torch.Generator,
    what: str,
) -> float:
    """SGD with cosine decay on CE over class-balanced batches; returns the last epoch's loss."""
    if cfg.epochs < 1:
        raise LtrayError(f"loss.decoupled.epochs: {what} needs at least 1 epoch, got {cfg.epochs}")
    batch_size = cfg.batch_size
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=MOMENTUM, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
    last_loss = math.nan
    for _ in range(cfg.epochs):
        total, steps = features.new_zeros(()), 0
        for idx in class_balanced_batches(labels, len(labels), batch_size, generator):
            loss = F.cross_entropy(logits_of(features[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, steps = total + loss.detach(), steps + 1
        last_loss = total.item() / steps
    return last_loss


def _crt(head, train_x, train_y, val_x, val_y, cfg, generator) -> tuple[nn.Module, dict]:
    new_head = copy.deepcopy(head).float().to(train_x.device)
    new_head.reset_parameters(generator=generator)
    params = list(new_head.parameters())
    loss = _train(params, new_head, train_x, train_y, cfg, generator, "crt")
    return new_head.eval(), {"train_loss": loss}


def _lws(head, train_x, train_y, val_x, val_y, cfg, generator) -> tuple[nn.Module, dict]:
    frozen = copy.deepcopy(head).float().to(train_x.device).requires_grad_(False)
    scales = nn.Parameter(torch.ones(head.out_features, device=train_x.device))
    loss = _train([scales], lambda x: frozen(x) * scales, train_x, train_y, cfg, generator, "lws")
    with torch.no_grad():
        frozen.weight.mul_(scales[:, None])
        if frozen.bias is not None:
            frozen.bias.mul_(scales)
    return frozen.requires_grad_(True).eval(), {
        "train_loss": loss,
        "scales": scales.detach().cpu().tolist(),
    }


def _tau_norm(head, train_x, train_y, val_x, val_y, cfg, generator) -> tuple[nn.Module, dict]:
    if cfg.tau is not None:
        return tau_normalized(head, cfg.tau).eval(), {"tau": cfg.tau}
    if len(val_y) == 0:
        raise LtrayError(
            "tau_norm chooses tau on the validation split, and this data set has none: prepare "
            "one with --val-per-class N, or give loss.decoupled.tau"
        )
    if not cfg.tau_grid or min(cfg.tau_grid) < 0:
        raise LtrayError(f"loss.decoupled.tau_grid must be non-empty and >= 0, got {cfg.tau_grid}")
    scores = {tau: accuracy(tau_normalized(head, tau), val_x, val_y) for tau in cfg.tau_grid}
    best = max(cfg.tau_grid, key=lambda tau: scores[tau])  # max keeps the first of equals
    return tau_normalized(head, best).eval(), {"tau": best, "val_acc_by_tau": scores}


_METHODS: dict[str, Callable[..., tuple[nn.Module, dict]]] = {
    "crt": _crt,
    "lws": _lws,
    "tau_norm": _tau_norm,
}
assert tuple(_METHODS) == DECOUPLED_METHODS


@torch.no_grad()
def collect_features(
    model: nn.Module,
    batches: Iterator[dict[str, Tensor]],
    normalize: Callable[[Tensor], Tensor],
    placement: Any,
    max_batches: int | None,
    world_size: int,
) -> tuple[Tensor, Tensor]:
    """The frozen backbone's features and labels of this rank's share of a split, gathered
    from every rank (``world_size`` > 1), on the CPU in fp32."""
    model.eval()
    feats, labels = [], []
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        with placement.autocast():
            out = model(normalize(batch["image"]))
        feats.append(out.features.float().cpu())
        labels.append(batch["label"])
    features = torch.cat(feats) if feats else torch.empty(0, model.feature_dim)
    label_t = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, (features, label_t))
        features = torch.cat([g[0] for g in gathered])
        label_t = torch.cat([g[1] for g in gathered])
    return features, label_t
