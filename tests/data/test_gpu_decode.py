import collections
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ltray.data import gpu_decode
from ltray.data.decode import decode_rgb
from ltray.data.gpu_decode import UndecodableImage, decode_batch, gpu_decodable

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _encode(mode: str, fmt: str = "JPEG", size=(24, 20), **options) -> bytes:
    """A smooth image with a little noise: the kind JPEG codecs agree on to a few levels."""
    w, h = size
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(h) * 200 // h, np.arange(w) * 50 // w)
    rgb = np.stack([ramp, ramp[::-1], ramp[:, ::-1]], -1) + rng.integers(0, 6, (h, w, 3))
    image = Image.fromarray(rgb.astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


BASELINE = _encode("RGB", subsampling=0)  # 4:4:4: no chroma upsampling for decoders to differ on
GREY = _encode("L")
PROGRESSIVE = _encode("RGB", progressive=True, subsampling=0)
CMYK = _encode("CMYK")
PNG = _encode("RGB", fmt="PNG")


def _sof_offset(data: bytes) -> int:
    return data.index(b"\xff\xc0")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (BASELINE, None),
        (GREY, None),
        (PROGRESSIVE, None),  # nvjpeg decodes progressive JPEGs too
        (CMYK, "cmyk"),
        (PNG, "png"),
        (b"GIF89a not an image we take", "not-jpeg"),
        (b"", "not-jpeg"),
        (BASELINE[: _sof_offset(BASELINE)], "truncated"),  # the header stops before the frame
        (BASELINE[: _sof_offset(BASELINE) + 6], "truncated"),  # ... inside the frame header
        (BASELINE.replace(b"\xff\xc0", b"\xff\xc3", 1), "unsupported"),  # lossless
        (b"\xff\xd8\xff\xda\x00\x08", "malformed"),  # a scan before any frame
        (b"\xff\xd8\xff\xe0\x00\x01", "malformed"),  # a segment length under 2
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20, "malformed"),  # no marker after it
    ],
)
def test_classification_reads_the_header(data, reason):
    assert gpu_decodable(data) == reason
    assert reason is None or reason in gpu_decode.FALLBACK_REASONS


def test_a_12_bit_frame_is_not_for_nvjpeg():
    sof = _sof_offset(BASELINE)
    twelve_bit = BASELINE[: sof + 4] + b"\x0c" + BASELINE[sof + 5 :]
    assert gpu_decodable(twelve_bit) == "unsupported"


def test_fill_bytes_before_a_marker_are_skipped():
    sof = _sof_offset(BASELINE)
    assert gpu_decodable(BASELINE[:sof] + b"\xff\xff" + BASELINE[sof:]) is None


def test_every_cut_of_a_header_gives_a_reason_and_never_raises():
    for data in (BASELINE, PROGRESSIVE, CMYK):
        for end in range(_sof_offset(BASELINE) + 10):
            assert gpu_decodable(data[:end]) is not None


def test_on_the_cpu_every_image_is_decode_rgb_and_nothing_falls_back():
    images = [BASELINE, GREY, PROGRESSIVE, CMYK, PNG]
    batch = decode_batch(images, torch.device("cpu"))
    assert batch.fallback == collections.Counter()
    assert len(batch.images) == len(images)
    for data, image in zip(images, batch.images, strict=True):
        assert torch.equal(image, decode_rgb(data))
        assert image.dtype == torch.uint8 and image.shape == (3, 20, 24)


@pytest.mark.parametrize("bad", [b"not an image", BASELINE[: len(BASELINE) // 2] + b"\x00" * 8])
def test_an_undecodable_image_names_its_position(bad):
    with pytest.raises(UndecodableImage) as caught:
        decode_batch([BASELINE, GREY, bad, PNG], torch.device("cpu"))
    assert caught.value.position == 2 and isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("image 2: ")


class _FakeNvjpeg:
    """decode_jpeg with device="cuda" played on the CPU: records its calls and refuses
    the ``refused`` bytes (alone or in a batch), as nvjpeg refuses a whole failing batch."""

    def __init__(self, refused: bytes) -> None:
        self.refused = refused
        self.calls: list[int | None] = []  # batch size, or None for a single image

    def __call__(self, encoded, mode, device):
        assert device.type == "cuda"
        batch = encoded if isinstance(encoded, list) else [encoded]
        self.calls.append(len(encoded) if isinstance(encoded, list) else None)
        if any(bytes(t.numpy()) == self.refused for t in batch):
            raise RuntimeError("nvjpeg: refused")
        out = [decode_rgb(bytes(t.numpy())) for t in batch]
        return out if isinstance(encoded, list) else out[0]


def test_on_cuda_one_batched_call_takes_the_jpegs_nvjpeg_decodes(monkeypatch):
    """The CUDA branch's routing, run on the CPU: nvjpeg's part goes in one call; the
    rest is decoded on the CPU and counted by reason."""
    fake = _FakeNvjpeg(refused=b"")
    monkeypatch.setattr(gpu_decode, "decode_jpeg", fake)
    monkeypatch.setattr(gpu_decode, "to_device", lambda tensor, device: tensor)
    images = [PNG, BASELINE, PROGRESSIVE, GREY, CMYK, BASELINE]
    batch = decode_batch(images, torch.device("cuda"))
    assert fake.calls == [4]
    assert batch.fallback == collections.Counter(png=1, cmyk=1)
    for data, image in zip(images, batch.images, strict=True):
        assert torch.equal(image, decode_rgb(data))


def test_on_cuda_a_refusing_batch_is_retried_one_by_one_and_the_refused_go_to_the_cpu(
    monkeypatch,
):
    odd = _encode("RGB", size=(8, 8))  # looks like any baseline JPEG; the fake refuses it
    fake = _FakeNvjpeg(refused=odd)
    monkeypatch.setattr(gpu_decode, "decode_jpeg", fake)
    monkeypatch.setattr(gpu_decode, "to_device", lambda tensor, device: tensor)
    images = [BASELINE, odd, PNG, GREY]
    batch = decode_batch(images, torch.device("cuda"))
    assert fake.calls == [3, None, None, None]
    assert batch.fallback == collections.Counter(refused=1, png=1)
    assert torch.equal(batch.images[1], decode_rgb(odd))


def test_on_cuda_an_image_no_decoder_takes_still_names_its_position(monkeypatch):
    broken = BASELINE[: len(BASELINE) // 2]  # the header is whole, the scan is not
    monkeypatch.setattr(gpu_decode, "decode_jpeg", _FakeNvjpeg(refused=broken))
    monkeypatch.setattr(gpu_decode, "to_device", lambda tensor, device: tensor)
    with pytest.raises(UndecodableImage) as caught:
        decode_batch([GREY, PNG, broken], torch.device("cuda"))
    assert caught.value.position == 2


@needs_cuda
@pytest.mark.gpu
def test_nvjpeg_agrees_with_the_cpu_decoder_and_the_rest_falls_back():
    device = torch.device("cuda")
    images = [BASELINE, GREY, PROGRESSIVE, CMYK, PNG]
    batch = decode_batch(images, device)
    assert batch.fallback == collections.Counter(cmyk=1, png=1)
    for data, image in zip(images, batch.images, strict=True):
        assert image.device.type == "cuda" and image.dtype == torch.uint8
        diff = (image.cpu().int() - decode_rgb(data).int()).abs()
        # IDCTs differ by up to 1 per Y/Cb/Cr sample; YCbCr -> RGB multiplies chroma errors by
        # up to 1.772 (B), so a pixel may differ by 3, rounding included; on average well under 1
        assert diff.max() <= 4 and diff.float().mean() < 1, (diff.max(), diff.float().mean())
