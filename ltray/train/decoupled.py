"""tau-normalisation (Kang et al. 2020) on a frozen stage-1 head, and the features it reads.

    tau_norm  rescale rows by 1 / ||w_j||^tau and drop the bias (models.tau_normalized),
              tau as given (``cfg.tau``) or chosen from ``cfg.tau_grid`` by top-1 accuracy on
              the VALIDATION split's features (ties: the first in the grid); never on training
              features (after a long stage 1 nearly all are right for any tau) nor on test

cRT and LWS train the classifier on images: :mod:`ltray.train.classifier_stage`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ltray.config import DecoupledConfig
from ltray.errors import LtrayError
from ltray.models.heads import LinearHead, tau_normalized

EVAL_CHUNK = 4096


def tau_norm(
    head: nn.Module, val_features: Tensor, val_labels: Tensor, cfg: DecoupledConfig
) -> tuple[nn.Module, dict]:
    """The tau-normalised copy of the stage-1 ``head`` (left untouched) and what was chosen:
    ``tau``, and with a val split ``val_acc`` and ``val_acc_by_tau``."""
    if not isinstance(head, LinearHead):
        raise LtrayError(
            f"tau_norm needs a linear head from stage 1, got {type(head).__name__} "
            "(loss.decoupled.stage1_loss must train a linear head)"
        )
    val_features = val_features.detach().float()
    if cfg.tau is not None:
        new_head, info = tau_normalized(head, cfg.tau).eval(), {"tau": cfg.tau}
    else:
        if len(val_labels) == 0:
            raise LtrayError(
                "tau_norm chooses tau on the validation split, and this data set has none: "
                "prepare one with --val-per-class N, or give loss.decoupled.tau"
            )
        if not cfg.tau_grid or min(cfg.tau_grid) < 0:
            raise LtrayError(
                f"loss.decoupled.tau_grid must be non-empty and >= 0, got {cfg.tau_grid}"
            )
        scores = {
            tau: accuracy(tau_normalized(head, tau), val_features, val_labels)
            for tau in cfg.tau_grid
        }
        best = max(cfg.tau_grid, key=lambda tau: scores[tau])  # max keeps the first of equals
        new_head, info = tau_normalized(head, best).eval(), {"tau": best, "val_acc_by_tau": scores}
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
        labels.append(batch["label"].cpu())  # on the device where the input path put it
    features = torch.cat(feats) if feats else torch.empty(0, model.feature_dim)
    label_t = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, (features, label_t))
        features = torch.cat([g[0] for g in gathered])
        label_t = torch.cat([g[1] for g in gathered])
    return features, label_t
