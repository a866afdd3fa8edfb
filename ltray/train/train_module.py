"""What one training step runs: the model and its loss as one module, and its compilation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ltray.compile_errors import is_compile_failure
from ltray.errors import LtrayError
from ltray.losses.base import LossOutput


class TrainModule(torch.nn.Module):
    """Model and loss in one module, so DDP also averages the loss's own parameters (a learned
    scale, a learned ring radius)."""

    def __init__(self, model: torch.nn.Module, criterion: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        out = self.model(images)
        return self.criterion(out, labels, self.model.head)


def compile_step(module: TrainModule, **options: Any) -> None:
    """``scaling.compile``: torch.compile the model with its loss, so that the loss's
    elementwise work (dr: margin, cosine head, norm terms) fuses with the step's instead of
    launching a kernel an op, and the model alone for evaluation. In place, so state_dict keys
    and checkpoints are unchanged. ``options`` go to torch.compile (tests pick a backend)."""
    module.model.compile(**options)
    module.compile(**options)


@contextlib.contextmanager
def compile_failures_named() -> Iterator[None]:
    """Around a compiled step's forward and backward (torch.compile builds them at their
    first call, and again when a guard fails): a compile that cannot be built on this host
    becomes one error naming ``scaling.compile`` and the way out; other errors pass."""
    try:
        yield
    except Exception as exc:
        if not is_compile_failure(exc):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LtrayError(
            f"scaling.compile: torch.compile could not build the training step on this host "
            f"({type(exc).__name__}: {reason:.300}); train without it (--set "
            f"scaling.compile=false), or give the host what it names (a C++ compiler for "
            f"CPU workers, Triton for GPU workers)"
        ) from exc
