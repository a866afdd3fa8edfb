"""Learning-rate schedule as a pure function of the (fractional) epoch.

The schedule has no state of its own: resuming at (epoch, step) recomputes the same rate, so a
checkpoint needs no scheduler object.
"""

from __future__ import annotations

import math

from ltray.config import OptimConfig, ScheduleConfig


def scaled_lr(optim: OptimConfig, world_size: int) -> float:
    """The peak learning rate for this global batch.

    ``optim.lr`` is the rate at ``optim.base_batch_size``; with ``lr_scaling: linear`` (Goyal et
    al. 2017) the rate grows in proportion to the global batch (batch_size x workers), with
    ``sqrt`` in proportion to its square root, and ``none`` keeps it as written.
    """
    ratio = optim.batch_size * world_size / optim.base_batch_size
    exponent = {"linear": 1.0, "sqrt": 0.5, "none": 0.0}[optim.lr_scaling]
    return optim.lr * ratio**exponent


def lr_at(epoch: float, peak_lr: float, schedule: ScheduleConfig) -> float:
    """The rate at a fractional epoch: linear warm-up, then multi-step or cosine decay.

    The loop passes the epoch reached at the end of the step, ``epoch + (step + 1) / steps``,
    so the first step of warm-up already has a non-zero rate (as in LDAM-DRW's recipe).
    """
    if epoch < schedule.warmup_epochs:
        return peak_lr * epoch / schedule.warmup_epochs
    if schedule.kind == "multistep":
        passed = sum(1 for milestone in schedule.milestones if epoch >= milestone)
        return peak_lr * schedule.gamma**passed
    span = max(schedule.epochs - schedule.warmup_epochs, 1e-8)
    progress = min(max((epoch - schedule.warmup_epochs) / span, 0.0), 1.0)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
