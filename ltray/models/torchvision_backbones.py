"""ImageNet-style backbones from torchvision, always built with ``weights=None``.

Each is torchvision's network with its final fully connected layer replaced by the identity,
so it returns the pooled features [B, D]; the head is ltray's. Nothing is ever downloaded.
torchvision is imported when one is built: importing it costs seconds of CPU (it pulls in
torch._dynamo), which processes that only name a model (a run's driver, Ray's controller, a
sweep's trial drivers) need not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from torchvision.models import resnet as tv


class TorchvisionBackbone(nn.Module):
    """A torchvision ResNet without its ``fc``: images -> pooled features [B, feature_dim]."""

    def __init__(self, net: tv.ResNet) -> None:
        super().__init__()
        self.feature_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def resnet10() -> TorchvisionBackbone:
    """ResNet-10: BasicBlock x [1, 1, 1, 1], 512-d features (the ImageNet-LT small baseline)."""
    from torchvision.models import resnet as tv

    return TorchvisionBackbone(tv.ResNet(tv.BasicBlock, [1, 1, 1, 1]))


def resnet50() -> TorchvisionBackbone:
    """ResNet-50, 2048-d features (iNaturalist 2018)."""
    from torchvision.models import resnet as tv

    return TorchvisionBackbone(tv.resnet50(weights=None))


def resnext50_32x4d() -> TorchvisionBackbone:
    """ResNeXt-50 32x4d, 2048-d features (ImageNet-LT)."""
    from torchvision.models import resnet as tv

    return TorchvisionBackbone(tv.resnext50_32x4d(weights=None))
