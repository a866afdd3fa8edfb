"""What one training step runs: the model and its loss as one module, and its compilation."""

from __future__ import annotations

from typing import Any

import torch

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
