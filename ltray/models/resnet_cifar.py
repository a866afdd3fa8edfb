"""ResNet-32 for 32x32 inputs, the CIFAR-LT standard (He et al. 2016, as in LDAM-DRW's code).

Three stages of five basic blocks with 16 / 32 / 64 channels; the first block of stages two
and three halves the resolution. Option A shortcuts (strided identity, zero-padded channels,
no parameters) as in the paper's CIFAR experiments; option B uses a 1x1 convolution. Kaiming
normal initialisation of every convolution. The backbone ends in global average pooling, so
it returns 64-d features and accepts any input size.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

Shortcut = Literal["A", "B"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(planes - in_planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels, half on each side."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.pad = extra_channels // 2
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


class CifarResNet(nn.Module):
    """Stem (3x3 conv, 16 channels) and three stages; returns pooled features [B, 64]."""

    def __init__(self, blocks_per_stage: int, shortcut: Shortcut = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.feature_dim = in_planes
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def resnet32(shortcut: Shortcut = "A") -> CifarResNet:
    """ResNet-32: 3 stages x 5 blocks (6n + 2 layers with n = 5), 64-d features."""
    return CifarResNet(5, shortcut)
