"""Per-sample augmentation on uint8 CHW tensors, with randomness from an explicit generator.

``build_transform(augment, image_size, train)`` returns ``f(image, generator) -> uint8
[3, S, S]``. The reader seeds the generator from (seed, epoch, rank, global batch index), so
a resumed epoch augments exactly as the uninterrupted one would have.

- ``cifar``:    train: zero-pad 4, random S x S crop, horizontal flip (He et al. 2016).
- ``imagenet``: train: random resized crop (scale 0.08-1, ratio 3/4-4/3) to S, flip.
- ``none``:     train as eval.
- eval (all):   resize the shorter side to S / crop_fraction, centre crop S; an image that is
  already S x S is returned unchanged. crop_fraction is 0.875 for imagenet (256 -> 224), 1 else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ltray.registry import Registry

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTS: Registry[Transform] = Registry("augment")


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=g))


def _randint(g: torch.Generator, high: int) -> int:
    """Uniform in [0, high)."""
    return int(torch.randint(0, high, (1,), generator=g))


def _flip(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return img.flip(-1) if _uniform(g, 0.0, 1.0) < 0.5 else img


def resize_center_crop(img: torch.Tensor, size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """Shorter side to round(size / crop_fraction), then the centre size x size."""
    if img.shape[-2:] == (size, size):
        return img
    img = TF.resize(img, [round(size / crop_fraction)], antialias=True)
    return TF.center_crop(img, [size, size])


def pad_crop_flip(img: torch.Tensor, g: torch.Generator, size: int, pad: int = 4) -> torch.Tensor:
    """CIFAR: zero-pad, random size x size crop, random horizontal flip."""
    if img.shape[-2:] != (size, size):
        img = resize_center_crop(img, size)
    padded = F.pad(img, (pad, pad, pad, pad))
    top = _randint(g, padded.shape[-2] - size + 1)
    left = _randint(g, padded.shape[-1] - size + 1)
    return _flip(padded[:, top : top + size, left : left + size], g)


def random_resized_crop_box(
    height: int,
    width: int,
    g: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop picks it, from ``g``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, *log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return _randint(g, height - h + 1), _randint(g, width - w + 1), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_flip(img: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    top, left, h, w = random_resized_crop_box(img.shape[-2], img.shape[-1], g)
    crop = img[:, top : top + h, left : left + w]
    return _flip(TF.resize(crop, [size, size], antialias=True), g)


def center(
    img: torch.Tensor, g: torch.Generator, size: int, crop_fraction: float = 1.0
) -> torch.Tensor:
    """Eval: :func:`resize_center_crop`, no randomness (``g`` is unused)."""
    return resize_center_crop(img, size, crop_fraction)


# partials of module-level functions pickle, so loaders may spawn their workers
@AUGMENTS.register("cifar")
def _cifar(image_size: int, train: bool) -> Transform:
    return partial(pad_crop_flip if train else center, size=image_size)


@AUGMENTS.register("imagenet")
def _imagenet(image_size: int, train: bool) -> Transform:
    if train:
        return partial(random_resized_crop_flip, size=image_size)
    return partial(center, size=image_size, crop_fraction=0.875)


@AUGMENTS.register("none")
def _none(image_size: int, train: bool) -> Transform:
    return partial(center, size=image_size)


def build_transform(augment: str, image_size: int, train: bool) -> Transform:
    """The per-sample transform ``(uint8 [3,H,W], torch.Generator) -> uint8 [3,S,S]``."""
    return AUGMENTS.create(augment, image_size, train)
