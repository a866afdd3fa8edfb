"""Augmentation of whole batches, on the device the images lie on: the CPU in loader
processes, or the GPU (the GPU input path and the set held on the device).

``build_batch_transform(augment, image_size, train)`` returns ``f(images, generator) ->
uint8 [B, 3, S, S]`` on the images' device, where ``images`` is a uint8 [B, 3, H, W] tensor
or a list of uint8 [3, H_i, W_i] tensors (sizes may differ) on one device. The augments
(``AUGMENTS``, ``data.augment``):

- ``cifar``:    train: zero-pad 4, random S x S crop, horizontal flip (He et al. 2016).
- ``imagenet``: train: random resized crop (scale 0.08-1, ratio 3/4-4/3, bilinear,
  antialiased) to S, flip.
- ``none``:     train as eval.
- eval (all):   resize the shorter side to S / crop_fraction, centre crop S; a batch that is
  already S x S is returned as it is. crop_fraction is 0.875 for imagenet (256 -> 224), 1 else.

The randomness is drawn for the whole batch at once, from ``generator`` (a CPU generator the
caller seeds per batch from (seed, epoch, rank, global batch index), ``dataset.batch_seed``,
so a resumed epoch augments exactly as the uninterrupted one would have), in this order:

- ``cifar`` train: crop offsets [2, B] (top, then left; ``randint(0, 2 * pad + 1)``), then
  the flip draws [B] (``rand < 0.5``);
- ``imagenet`` train: area fractions [B, 10], log aspect ratios [B, 10], crop position
  fractions [B, 2] (see :func:`random_resized_crop_boxes`), then the flip draws [B];
- eval and ``none``: nothing.

A few draws per batch rather than a few per image: per-sample scalar draws cost about
1.5 ms a batch, a tenth of a launch-bound ResNet-32 step. The parameters reach a GPU through
pinned memory without a host synchronisation (:func:`ltray.data.gpu_decode.to_device`).
The same seed gives the same batch on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ltray.data.gpu_decode import to_device
from ltray.registry import Registry

Images = torch.Tensor | list[torch.Tensor]
BatchTransform = Callable[[Images, torch.Generator], torch.Tensor]
RRC_TRIES = 10  # torchvision's RandomResizedCrop tries this many boxes before the centre


# factories (image_size, train) -> BatchTransform; partials of module-level functions, which
# pickle, so loaders may spawn their workers
AUGMENTS: Registry[Callable[[int, bool], BatchTransform]] = Registry("augment")


def resize_center_crop(img: torch.Tensor, size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """One image [3, H, W]: shorter side to round(size / crop_fraction), then the centre
    size x size (antialiased, as torchvision's Resize + CenterCrop)."""
    if img.shape[-2:] == (size, size):
        return img
    img = TF.resize(img, [round(size / crop_fraction)], antialias=True)
    return TF.center_crop(img, [size, size])


def _square_batch(images: Images, size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """[B, 3, S, S]: the input itself when it already is one, else each image resized and
    centre-cropped (:func:`resize_center_crop`) and stacked."""
    if isinstance(images, torch.Tensor) and images.shape[-2:] == (size, size):
        return images
    return torch.stack([resize_center_crop(image, size, crop_fraction) for image in images])


def pad_crop_flip_batch(
    batch: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """Zero-pad [B, 3, S, S] by ``pad``, take the S x S window at (top, left) of the padded
    image, mirrored where ``flip``: one gather, with the offsets and the flip folded into
    its index. ``top``, ``left`` (int64) and ``flip`` (bool) are [B] on the batch's device."""
    b, channels, size, _ = batch.shape
    padded = F.pad(batch, (pad, pad, pad, pad))
    side = size + 2 * pad
    steps = torch.arange(size, device=batch.device)
    rows = top[:, None] + steps  # [B, S]
    cols = left[:, None] + torch.where(flip[:, None], size - 1 - steps, steps)  # [B, S]
    index = (rows[:, :, None] * side + cols[:, None, :]).view(b, 1, size * size)
    flat = padded.reshape(b, channels, side * side)
    return flat.gather(2, index.expand(b, channels, size * size)).view(b, channels, size, size)


def pad_crop_flip(
    images: Images, generator: torch.Generator, size: int, pad: int = 4
) -> torch.Tensor:
    """CIFAR train: zero-pad, random S x S crop, random horizontal flip, for the batch."""
    batch = _square_batch(images, size)
    n = batch.shape[0]
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    params = to_device(torch.cat([offsets, flip[None].long()]), batch.device)  # one copy
    return pad_crop_flip_batch(batch, params[0], params[1], params[2].bool(), pad)


def random_resized_crop_boxes(
    heights: torch.Tensor,
    widths: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """int64 [B, 4] (top, left, h, w) as torchvision's RandomResizedCrop picks them, for
    images of ``heights`` x ``widths`` ([B] on the CPU), drawn from ``generator``."""
    n = len(heights)
    areas = torch.empty(n, RRC_TRIES, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_ratios = torch.empty(n, RRC_TRIES, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    positions = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    return boxes_from_draws(heights, widths, areas, log_ratios, positions, ratio)


def boxes_from_draws(
    heights: torch.Tensor,
    widths: torch.Tensor,
    areas: torch.Tensor,
    log_ratios: torch.Tensor,
    positions: torch.Tensor,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """The boxes of :func:`random_resized_crop_boxes`, given its draws: try k of image b has
    area fraction ``areas[b, k]`` and aspect ratio ``exp(log_ratios[b, k])``; the first try
    that fits the image is placed at ``positions[b]`` (fractions of the free rows and
    columns); where none fits, torchvision's fallback: the centred box of the whole image,
    its aspect ratio clamped into ``ratio``."""
    heights = heights.to(torch.int64)
    widths = widths.to(torch.int64)
    h_all, w_all = heights[:, None].double(), widths[:, None].double()  # float64 as Python's
    targets = h_all * w_all * areas
    aspects = log_ratios.exp()
    w_try = (targets * aspects).sqrt().round()
    h_try = (targets / aspects).sqrt().round()
    fits = (w_try > 0) & (w_try <= w_all) & (h_try > 0) & (h_try <= h_all)
    first = fits.long().argmax(1, keepdim=True)  # the first try that fits (0 where none)
    found = fits.any(1)
    h_found = h_try.gather(1, first)[:, 0].long()
    w_found = w_try.gather(1, first)[:, 0].long()
    in_ratio = w_all[:, 0] / h_all[:, 0]
    narrow, wide = in_ratio < ratio[0], in_ratio > ratio[1]
    h_centre = torch.where(narrow, (w_all[:, 0] / ratio[0]).round().long(), heights)
    w_centre = torch.where(wide, (h_all[:, 0] * ratio[1]).round().long(), widths)
    h = torch.where(found, h_found, h_centre)
    w = torch.where(found, w_found, w_centre)
    free_rows, free_cols = heights - h, widths - w
    top = (positions[:, 0] * (free_rows + 1)).floor().long().clamp(max=free_rows)
    left = (positions[:, 1] * (free_cols + 1)).floor().long().clamp(max=free_cols)
    top = torch.where(found, top, free_rows // 2)
    left = torch.where(found, left, free_cols // 2)
    return torch.stack([top, left, h, w], 1)


def random_resized_crop_flip(images: Images, generator: torch.Generator, size: int) -> torch.Tensor:
    """ImageNet train: RandomResizedCrop to S x S (bilinear, antialiased), random flip.

    Each image is cropped and resized on its own (the crops differ in size); rounding, the
    cast to uint8 and the flips then run once for the batch: two operations an image where
    there were six, which on a GPU are kernel launches the decode thread makes while the
    step runs (about 520 a batch of 256 where there were 1,420)."""
    images = list(images)
    heights = torch.tensor([image.shape[-2] for image in images])
    widths = torch.tensor([image.shape[-1] for image in images])
    boxes = random_resized_crop_boxes(heights, widths, generator).tolist()
    flips = torch.rand(len(images), generator=generator) < 0.5
    resized = [
        F.interpolate(
            image[None, :, top : top + h, left : left + w].float(),
            size=(size, size),
            mode="bilinear",
            antialias=True,
        )
        for image, (top, left, h, w) in zip(images, boxes, strict=True)
    ]
    batch = torch.cat(resized).round_().clamp_(0, 255).to(torch.uint8)
    flip = to_device(flips, batch.device)[:, None, None, None]
    return torch.where(flip, batch.flip(-1), batch)


def center(
    images: Images, generator: torch.Generator, size: int, crop_fraction: float = 1.0
) -> torch.Tensor:
    """Eval: :func:`resize_center_crop` each image (``generator`` is unused); a batch that is
    already S x S is returned as it is."""
    return _square_batch(images, size, crop_fraction)


@AUGMENTS.register("cifar")
def _cifar(image_size: int, train: bool) -> BatchTransform:
    return partial(pad_crop_flip if train else center, size=image_size)


@AUGMENTS.register("imagenet")
def _imagenet(image_size: int, train: bool) -> BatchTransform:
    if train:
        return partial(random_resized_crop_flip, size=image_size)
    return partial(center, size=image_size, crop_fraction=0.875)


@AUGMENTS.register("none")
def _none(image_size: int, train: bool) -> BatchTransform:
    return partial(center, size=image_size)


def build_batch_transform(augment: str, image_size: int, train: bool) -> BatchTransform:
    """The batch transform ``(uint8 [B,3,H,W] or list of [3,H_i,W_i], CPU generator) ->
    uint8 [B,3,S,S]`` on the images' device, of the augment ``AUGMENTS`` names."""
    return AUGMENTS.create(augment, image_size, train)
