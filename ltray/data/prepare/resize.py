"""Prepare-time resize, opt-in (``--resize-shorter N [--jpeg-quality Q]``).

Long-tail code bases train iNaturalist and ImageNet-LT from copies whose shorter side is
256-320 px: the train-time crop never needs more, and a data set a fraction of the size reads
and decodes faster. An image whose shorter side exceeds N is decoded exactly as training
decodes it (:func:`ltray.data.decode.decode_rgb`: RGB, stored orientation, EXIF orientation
not applied, 16-bit scaled to 8), resized so its shorter side is N with the aspect ratio kept,
and re-encoded as a baseline JPEG at quality Q; the pixels trained on are then those of the
original, only smaller. Every other image keeps its original bytes. Without the option nothing
is ever re-encoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from ltray.errors import LtrayError

DEFAULT_JPEG_QUALITY = 90
FILTER = "PIL.Image.Resampling.LANCZOS"  # antialiased: its support scales with the reduction


@dataclass(frozen=True)
class Resize:
    """The shorter side images are brought down to, and the JPEG quality they are written at."""

    shorter: int
    jpeg_quality: int = DEFAULT_JPEG_QUALITY

    def __post_init__(self) -> None:
        if self.shorter < 1:
            raise LtrayError(f"--resize-shorter must be a side in pixels >= 1, got {self.shorter}")
        if not 1 <= self.jpeg_quality <= 100:
            raise LtrayError(f"--jpeg-quality must be in [1, 100], got {self.jpeg_quality}")

    def record(self) -> dict[str, Any]:
        """What the manifest and the fingerprint's recipe keep of it."""
        return {"shorter": self.shorter, "jpeg_quality": self.jpeg_quality, "filter": FILTER}


def resize_option(shorter: int | None, jpeg_quality: int | None) -> Resize | None:
    """``--resize-shorter`` / ``--jpeg-quality`` -> a Resize, or None (original bytes)."""
    if shorter is None:
        if jpeg_quality is not None:
            raise LtrayError(
                "--jpeg-quality applies to resized images only: pass --resize-shorter N too"
            )
        return None
    return Resize(shorter, DEFAULT_JPEG_QUALITY if jpeg_quality is None else jpeg_quality)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``shorter`` and the aspect ratio kept (the longer
    side rounded to the nearest pixel)."""
    if width <= height:
        return shorter, max(1, round(height * shorter / width))
    return max(1, round(width * shorter / height)), shorter


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as stored, from the header alone; None where PIL cannot tell (the image
    is then decoded to find out, as training would decode it)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:  # noqa: BLE001 - a shortcut only; decoding gives the answer
        return None


def resize_image(data: bytes, resize: Resize) -> bytes:
    """The bytes to write for one image: ``data`` itself when its shorter side is at most
    ``resize.shorter``, else the resized JPEG. ValueError if the image does not decode."""
    from PIL import Image

    from ltray.data.decode import decode_rgb  # torch: imported where an image is decoded

    size = _header_size(data)
    if size is not None and min(size) <= resize.shorter:
        return data
    pixels = decode_rgb(data).permute(1, 2, 0).contiguous().numpy()  # HWC, as trained on
    height, width = pixels.shape[:2]
    if min(width, height) <= resize.shorter:
        return data
    image = Image.fromarray(pixels)
    image = image.resize(resized_size(width, height, resize.shorter), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=resize.jpeg_quality, progressive=False)
    return buf.getvalue()


@dataclass
class ByteTally:
    """Images written, how many of them were resized, and their bytes as read and as written:
    what the summary and the manifest report per split."""

    images: int = 0
    resized: int = 0
    source_bytes: int = 0
    bytes: int = 0

    def add(self, source: bytes, written: bytes) -> None:
        self.images += 1
        self.resized += written is not source
        self.source_bytes += len(source)
        self.bytes += len(written)

    def __add__(self, other: ByteTally) -> ByteTally:
        return ByteTally(
            self.images + other.images,
            self.resized + other.resized,
            self.source_bytes + other.source_bytes,
            self.bytes + other.bytes,
        )

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ByteTally:
        return cls(**{key: int(value) for key, value in data.items()})
