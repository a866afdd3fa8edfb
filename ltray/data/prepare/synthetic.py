"""A generated long-tailed image set with learnable class structure, for demos and tests.

Class c is a striped pattern with its own colour (hue c * golden ratio), orientation
(horizontal, vertical, diagonal or rings, by c mod 4) and frequency (by c div 4), drawn with
random phase, small rotation, hue and brightness jitter and pixel noise. A small CNN separates
ten classes well above chance in a few epochs; every image is a pure function of
(seed, split, label, index), so the set is reproducible and workers render in parallel.
"""

from __future__ import annotations

import colorsys
import io
import zlib
from dataclasses import dataclass

import numpy as np

FORMATS = ("jpeg", "png")
_GOLDEN = 0.6180339887498949


@dataclass(frozen=True)
class SyntheticRef:
    """One generated image: a pure function of (seed, split, label, index)."""

    seed: int
    split: str
    label: int
    index: int
    num_classes: int
    image_size: int
    fmt: str


def class_style(label: int) -> tuple[tuple[float, float, float], int, float]:
    """(RGB colour in [0, 1], pattern kind 0-3, cycles per image) of a class."""
    hue = (label * _GOLDEN) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return rgb, label % 4, 1.5 + (label // 4) % 5


def render_array(ref: SyntheticRef) -> np.ndarray:
    """The [S, S, 3] uint8 pixels of one synthetic image."""
    rng = np.random.default_rng([ref.seed, zlib.crc32(ref.split.encode()), ref.label, ref.index])
    size = ref.image_size
    colour, kind, cycles = class_style(ref.label)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    if kind == 3:
        cy, cx = rng.uniform(-0.2, 0.2, size=2)
        u = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    else:
        angle = np.deg2rad([0.0, 90.0, 45.0][kind] + rng.uniform(-12, 12))
        u = yy * np.cos(angle) + xx * np.sin(angle)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * cycles * u + rng.uniform(0, 2 * np.pi))
    hue_shift = rng.uniform(-0.04, 0.04)
    h, s, v = colorsys.rgb_to_hsv(*colour)
    fg = np.array(colorsys.hsv_to_rgb((h + hue_shift) % 1.0, s, v), dtype=np.float32)
    bg = rng.uniform(0.05, 0.3, size=3).astype(np.float32)
    img = bg * (1 - wave[..., None]) + fg * wave[..., None]
    img = img * rng.uniform(0.8, 1.15) + rng.normal(0, 0.06, size=img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render(ref: SyntheticRef) -> bytes:
    """One synthetic image, encoded as JPEG (quality 90) or PNG."""
    from PIL import Image

    if ref.fmt not in FORMATS:
        raise ValueError(f"synthetic format must be one of {FORMATS}, got {ref.fmt!r}")
    buf = io.BytesIO()
    image = Image.fromarray(render_array(ref))
    if ref.fmt == "jpeg":
        image.save(buf, format="JPEG", quality=90)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()
