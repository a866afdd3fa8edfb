"""Feature-norm regularisers that lift low feature norms, averaged over the batch.

    ring   (||f|| - R)^2          (Zheng et al. 2018), R fixed or learned
    hinge  max(0, R - ||f||)^2    one-sided: only norms below R are pushed up

A learned R (ring with ``radius=None``) is a parameter of the loss, initialised from the
mean feature norm of the first batch it sees (averaged over ranks when torch.distributed is
up), so the ring starts where the features are instead of pulling them to an arbitrary 1.0;
a flag buffer records the initialisation so a resumed run does not redo it. The hinge with
``radius=None`` uses R = 1.0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ltray.errors import LtrayError
from ltray.losses.base import as_float

NORM_KINDS: tuple[str, ...] = ("ring", "hinge")


def ring_loss(norms: Tensor, radius: Tensor | float) -> Tensor:
    """mean (||f|| - R)^2 over the batch."""
    return (norms - radius).square().mean()


def hinge_norm_loss(norms: Tensor, radius: Tensor | float) -> Tensor:
    """mean max(0, R - ||f||)^2 over the batch."""
    return (radius - norms).clamp_min(0.0).square().mean()


class FeatureNormLoss(nn.Module):
    """The ring or hinge term on features [B, D], computed in fp32 (fp64 kept)."""

    def __init__(self, kind: str, radius: float | None) -> None:
        super().__init__()
        if kind not in NORM_KINDS:
            raise LtrayError(f"unknown feature-norm kind {kind!r}; valid: {', '.join(NORM_KINDS)}")
        if radius is not None and radius <= 0:
            raise LtrayError(f"feature-norm radius must be > 0, got {radius}")
        self.kind = kind
        self.learn_radius = kind == "ring" and radius is None
        if self.learn_radius:
            self.radius = nn.Parameter(torch.tensor(1.0))
            self.register_buffer("radius_initialised", torch.tensor(False))
            self._initialised = False  # host copy of the flag: no device sync per step
        else:
            self.register_buffer("radius", torch.tensor(1.0 if radius is None else radius))

    def forward(self, features: Tensor) -> Tensor:
        norms = as_float(features).norm(dim=1)
        if self.learn_radius and not self._initialised:
            self._init_radius(norms)
        if self.kind == "ring":
            return ring_loss(norms, self.radius)
        return hinge_norm_loss(norms, self.radius)

    @torch.no_grad()
    def _init_radius(self, norms: Tensor) -> None:
        mean = norms.detach().mean()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        # a checkpoint may have set it already: chosen on the device, without reading the flag
        # (a read would synchronise the host with the GPU inside the step)
        self.radius.copy_(torch.where(self.radius_initialised, self.radius, mean))
        self.radius_initialised.fill_(True)
        self._initialised = True
