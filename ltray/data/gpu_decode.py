"""Batches of encoded images -> uint8 RGB CHW tensors on the training device.

On a CUDA device the JPEGs nvjpeg takes are decoded there, all in one batched
``torchvision.io.decode_jpeg`` call; the rest (PNG, CMYK JPEGs, anything
nvjpeg refuses) are decoded on the CPU by :func:`ltray.data.decode.decode_rgb`, one by one,
and counted by reason so that the trainer can say how much of its input missed the GPU. On
the CPU every image goes through ``decode_rgb``: the results have its layout everywhere
(RGB, uint8, [3, H, W]).

Which JPEGs nvjpeg takes is read from the header alone (:func:`gpu_decodable`): sending a
CMYK JPEG in the batch would make the whole batched call fail.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from ltray.data.decode import JPEG_MAGIC, PNG_MAGIC, decode_rgb, quiet_codec_deprecation

# why an image is decoded on the CPU on a CUDA device
FALLBACK_REASONS = (
    "png",  # not a JPEG: nvjpeg decodes JPEG only
    "not-jpeg",  # neither JPEG nor PNG (decode_rgb will refuse it)
    "unsupported",  # lossless, hierarchical or arithmetic-coded JPEG, or not 8-bit
    "cmyk",  # 4 components (CMYK / YCCK)
    "truncated",  # the header ends before the frame header (SOF)
    "malformed",  # a marker segment that cannot be, or no SOF before the scan
    "refused",  # nvjpeg raised on it although its header looked fine
)
# baseline, extended sequential and progressive, Huffman-coded: nvjpeg (CUDA 13) decoded all
# three on an H100, progressive included (bench/README.md, 2026-11-27)
_GPU_SOF = {0xC0, 0xC1, 0xC2}
# every other SOFn; C4 (DHT), C8 (reserved) and CC (DAC) share the range but are not frames
_OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn stand alone


def gpu_decodable(data: bytes) -> str | None:
    """None when nvjpeg decodes this image; else why not, one of :data:`FALLBACK_REASONS`.

    Walks the JPEG marker segments up to the frame header, without decoding: an 8-bit
    baseline, extended sequential or progressive frame with 1 or 3 components is nvjpeg's.
    Never raises.
    """
    if data[:8] == PNG_MAGIC:
        return "png"
    if data[:3] != JPEG_MAGIC:
        return "not-jpeg"
    pos = 2
    while True:
        if pos >= len(data):
            return "truncated"
        if data[pos] != 0xFF:
            return "malformed"
        while pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 1 >= len(data):
            return "truncated"
        marker = data[pos + 1]
        if marker in _NO_LENGTH:
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI again, EOI or a scan before any frame
            return "malformed"
        if pos + 4 > len(data):
            return "truncated"
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return "malformed"
        if marker in _OTHER_SOF:
            return "unsupported"
        if marker in _GPU_SOF:
            if pos + 10 > len(data):
                return "truncated"
            precision, components = data[pos + 4], data[pos + 9]
            if components == 4:
                return "cmyk"
            if precision != 8 or components not in (1, 3):
                return "unsupported"
            return None
        pos += 2 + length


class UndecodableImage(ValueError):
    """An image of a batch that no decoder takes; ``position`` is its index in the batch."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"image {position}: {reason}")
        self.position = position
        self.reason = reason


@dataclass
class DecodedBatch:
    """``images``: uint8 [3, H, W] on the device, in the input's order. ``fallback``: reason
    -> how many of them were decoded on the CPU although the device is a GPU."""

    images: list[torch.Tensor]
    fallback: collections.Counter[str] = field(default_factory=collections.Counter)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without a host synchronisation: a copy from pageable
    memory to a GPU blocks the host until the stream reaches it, one from pinned memory
    with ``non_blocking`` does not."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _decode_on_cpu(data: bytes, position: int) -> torch.Tensor:
    try:
        return decode_rgb(data)
    except ValueError as exc:
        raise UndecodableImage(position, str(exc)) from None


def _nvjpeg(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode on the GPU: one batched call; if it fails, one call per image to find the
    images it refuses (None)."""
    with quiet_codec_deprecation():
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        except (RuntimeError, ValueError):
            pass
        out: list[torch.Tensor | None] = []
        for one in encoded:
            try:
                out.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
            except (RuntimeError, ValueError):
                out.append(None)
        return out


def decode_batch(images: list[bytes], device: torch.device) -> DecodedBatch:
    """Decode encoded images onto ``device`` (nvjpeg for what it takes on CUDA, else the CPU).

    Raises :class:`UndecodableImage` for the first image the CPU decoder refuses too.
    """
    device = torch.device(device)
    decoded: list[torch.Tensor | None] = [None] * len(images)
    fallback: collections.Counter[str] = collections.Counter()
    on_cpu = list(range(len(images)))
    if device.type == "cuda":
        reasons = [gpu_decodable(data) for data in images]
        on_gpu = [i for i, reason in enumerate(reasons) if reason is None]
        encoded = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in on_gpu]
        for i, image in zip(on_gpu, _nvjpeg(encoded, device) if on_gpu else [], strict=True):
            decoded[i] = image
            if image is None:
                reasons[i] = "refused"
        on_cpu = [i for i in on_cpu if decoded[i] is None]
        fallback.update(reasons[i] for i in on_cpu)
    for i in on_cpu:
        decoded[i] = to_device(_decode_on_cpu(images[i], i), device)
    out = [image for image in decoded if image is not None]
    assert len(out) == len(images), "an image was neither decoded on the GPU nor on the CPU"
    return DecodedBatch(out, fallback)
