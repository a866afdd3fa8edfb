"""Image bytes -> uint8 RGB CHW tensors (torchvision.io), and the prepare-time validity check.

Only JPEG and PNG are accepted: they are what the sources hold, and what the reader decodes on
the CPU. The format is sniffed from the bytes, never from the file name (ImageNet has PNGs and
CMYK JPEGs named ``.JPEG``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torchvision.io import ImageReadMode, decode_image

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec, and warns on every
# call; we keep torchvision.io (the decoder training uses) and silence only that warning, at
# the call: a filter set at import does not survive in a Ray Train worker.
_CODEC_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"IEND\xaeB`\x82"
VALIDATE_MODES = ("decode", "header")


def sniff_format(data: bytes) -> str | None:
    """'jpeg', 'png' or None (not an image we accept)."""
    if data[:3] == JPEG_MAGIC:
        return "jpeg"
    if data[:8] == PNG_MAGIC:
        return "png"
    return None


def _short_reason(exc: Exception) -> str:
    """torchvision's messages start with a C++ source location; keep the last clause."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rsplit(", ", 1)[-1]


@contextlib.contextmanager
def quiet_codec_deprecation() -> Iterator[None]:
    """Around a torchvision.io codec call: hides its deprecation warning, and only that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _CODEC_DEPRECATION, DeprecationWarning)
        yield


def decode_rgb(data: bytes | memoryview) -> torch.Tensor:
    """Decode JPEG/PNG bytes to a uint8 [3, H, W] tensor (grey, CMYK, 16-bit become RGB8).

    Raises ValueError with a short reason for anything that does not decode.
    """
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if buf.numel() == 0:
        raise ValueError("empty file")
    try:
        with quiet_codec_deprecation():
            img = decode_image(buf, mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise ValueError(_short_reason(exc)) from None
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"decoded to shape {tuple(img.shape)}, not [3, H, W]")
    if img.dtype == torch.uint16:  # 16-bit PNG
        img = (img.to(torch.int32) // 257).to(torch.uint8)
    return img


def check_header(data: bytes) -> str | None:
    """Cheap structural check: JPEG SOI..EOI, PNG signature..IEND. None if it looks whole."""
    kind = sniff_format(data)
    if kind is None:
        return "not a JPEG or PNG file"
    if kind == "jpeg" and b"\xff\xd9" not in data[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    if kind == "png" and PNG_IEND not in data[-32:]:
        return "truncated PNG (no IEND chunk)"
    return None


def check_image(data: bytes, mode: str = "decode") -> str | None:
    """Why ``data`` is not a usable image, or None when it is.

    ``header`` checks the container (magic bytes and end marker); ``decode`` also decodes it,
    which catches corrupt bodies at the cost of one decode per image.
    """
    if mode not in VALIDATE_MODES:
        raise ValueError(f"validate mode must be one of {VALIDATE_MODES}, got {mode!r}")
    if mode == "header":
        return check_header(data)
    kind = sniff_format(data)
    if kind is None:
        return "not a JPEG or PNG file"
    try:
        decode_rgb(data)
    except ValueError as exc:
        return f"does not decode: {exc}"
    if kind == "png" and PNG_IEND not in data[-64:]:
        return "truncated PNG (no IEND chunk)"  # libpng decodes these without complaint
    return None
