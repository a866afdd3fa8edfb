"""Divergence: a non-finite loss or gradient on any rank stops every rank at the same step.

Each rank records the first step where its loss or gradients stopped being finite, as a tensor
(no host synchronisation per step); the ranks agree on the earliest with one all-reduce, and
the run fails naming epoch and step while the last good checkpoint is kept.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# where a Ray run's rank 0 leaves the divergence's message for the launcher, in the run's folder
FAILURE_FILE = "failure.txt"


class NonFiniteLoss(Exception):
    """Raised on every rank at once when the loss or gradients stop being finite."""


def gradients_finite(module: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """A bool tensor: every gradient of ``module`` is finite."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool, device=device)
    norms = torch._foreach_norm(grads)
    return torch.isfinite(torch.stack(norms).sum())


def first_bad_step(bad_step: torch.Tensor, distributed: bool) -> int | None:
    """The first step at which any rank saw a non-finite loss or gradient (collective)."""
    flag = torch.where(bad_step >= 0, bad_step, torch.iinfo(torch.long).max).reshape(1)
    if distributed:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    first = int(flag.item())
    return None if first == torch.iinfo(torch.long).max else first


def raise_if_any_rank_diverged(epoch: int, bad_step: torch.Tensor, distributed: bool) -> None:
    first = first_bad_step(bad_step, distributed)
    if first is not None:
        raise NonFiniteLoss(
            f"loss or gradients became non-finite at epoch {epoch} step {first}; "
            f"the last good checkpoint is kept (lower optim.lr or check the data)"
        )
