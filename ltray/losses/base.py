"""What every loss shares: the output type, the class-count checks, priors and the hooks.

A loss is built from the training split's class counts (from the manifest, never from a
batch) and is called as ``crit(out, target, head)`` on a ``ModelOutput``. It computes in fp32
(fp64 stays fp64) whatever the autocast dtype, so bf16 training does not change the loss arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ltray.errors import LtrayError
from ltray.models import ModelOutput


class LossOutput(NamedTuple):
    """The scalar to minimise and its named parts (detached, for logging)."""

    total: Tensor
    terms: dict[str, Tensor]


def check_class_counts(class_counts: Sequence[int]) -> list[int]:
    """The counts as ints; an empty list, a non-integer or a count below 1 is an error."""
    counts = list(class_counts)
    if len(counts) < 2:
        raise LtrayError(f"class counts: need at least 2 classes, got {len(counts)}")
    for label, n in enumerate(counts):
        if isinstance(n, bool) or int(n) != n:
            raise LtrayError(f"class counts: class {label} has a non-integer count {n!r}")
        if n < 1:
            raise LtrayError(
                f"class counts: class {label} has {n} training images; every class needs >= 1"
            )
    return [int(n) for n in counts]


def log_prior(class_counts: Sequence[int]) -> Tensor:
    """log(n_c / N) per class, float32."""
    counts = torch.tensor(check_class_counts(class_counts), dtype=torch.float64)
    return (counts / counts.sum()).log().float()


def effective_number_weights(class_counts: Sequence[int], beta: float) -> Tensor:
    """Cui et al. 2019: w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C.

    beta = 0 gives equal weights (all 1); beta -> 1 approaches inverse frequency.
    """
    if not 0.0 <= beta < 1.0:
        raise LtrayError(f"effective-number beta must be in [0, 1), got {beta}")
    counts = torch.tensor(check_class_counts(class_counts), dtype=torch.float64)
    weights = (1.0 - beta) / (1.0 - torch.pow(beta, counts))
    return (weights / weights.sum() * len(counts)).float()


def as_float(x: Tensor) -> Tensor:
    """fp16 / bf16 -> fp32 for the loss arithmetic; fp32 and fp64 (gradcheck) unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


class Criterion(nn.Module):
    """Base of every loss: class-count bookkeeping, the epoch, and the loop's hooks.

    Subclasses implement ``loss(out, target, head)``; ``forward`` checks the shapes first.
    ``head_kind`` names the head the loss needs; the loop builds the model with it.
    ``output_kind`` says what :meth:`predict_logits` returns (and a logged model serves).
    """

    head_kind: str = "linear"
    output_kind: str = "logits"

    def __init__(self, class_counts: Sequence[int]) -> None:
        super().__init__()
        self.class_counts = check_class_counts(class_counts)
        self.num_classes = len(self.class_counts)
        self.epoch = 0.0
        self.register_buffer("log_prior", log_prior(self.class_counts), persistent=False)

    def set_epoch(self, epoch: float) -> None:
        """The fractional epoch (epoch + step / steps_per_epoch): schedules inside the loss."""
        self.epoch = float(epoch)

    def predict_logits(self, out: ModelOutput) -> Tensor:
        """The scores a prediction is made from: their argmax is the class and their softmax
        the probabilities the loss trained (no training-only margin or prior offset)."""
        return out.logits

    def after_step(self, model: nn.Module) -> None:
        """Called after each ``optimizer.step()``; a no-op unless a loss constrains weights."""

    def forward(self, out: ModelOutput, target: Tensor, head: nn.Module) -> LossOutput:
        if out.logits.dim() != 2 or out.logits.shape[1] != self.num_classes:
            raise LtrayError(
                f"{type(self).__name__} was built for {self.num_classes} classes, "
                f"got logits of shape {tuple(out.logits.shape)}"
            )
        if self.head_kind == "cosine" and getattr(head, "kind", None) != "cosine":
            raise LtrayError(
                f"{type(self).__name__} needs a cosine head, got {type(head).__name__}; "
                "build the model with head=crit.head_kind"
            )
        return self.loss(out, target, head)

    def loss(self, out: ModelOutput, target: Tensor, head: nn.Module) -> LossOutput:
        raise NotImplementedError
