import warnings

import pytest
import torch

from ltray.data.decode import check_header, check_image, decode_rgb, sniff_format


def test_decode_jpeg_and_png_to_rgb_chw(make_image):
    for fmt in ("JPEG", "PNG"):
        img = decode_rgb(make_image(1, size=9, fmt=fmt))
        assert img.dtype == torch.uint8 and img.shape == (3, 9, 9)


def test_decoding_keeps_torchvisions_codec_deprecation_to_itself(make_image):
    """Filters set at import do not survive in a Ray Train worker (nor a -W always): the one
    around the call does, and it hides that warning only."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fmt in ("JPEG", "PNG"):
            decode_rgb(make_image(1, fmt=fmt))
        warnings.warn("a warning of our own", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "TorchVision are deprecated" in m], messages
    assert "a warning of our own" in messages


def test_grey_png_becomes_rgb():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (5, 4), 77).save(buf, format="PNG")
    img = decode_rgb(buf.getvalue())
    assert img.shape == (3, 4, 5) and int(img[2, 0, 0]) == 77


def test_sniff_by_bytes_not_name(make_image):
    assert sniff_format(make_image(1)) == "jpeg"
    assert sniff_format(make_image(1, fmt="PNG")) == "png"
    assert sniff_format(b"GIF89a....") is None


@pytest.mark.parametrize("mode", ["decode", "header"])
def test_check_image_finds_bad_files(make_image, mode):
    jpeg, png = make_image(2), make_image(3, fmt="PNG")
    assert check_image(jpeg, mode) is None and check_image(png, mode) is None
    assert "not a JPEG or PNG" in check_image(b"hello, I am text", mode)
    assert check_image(jpeg[: len(jpeg) // 2], mode) is not None
    assert check_image(png[:-12], mode) is not None
    assert check_image(b"", mode) is not None


def test_decode_mode_catches_what_header_mode_cannot(make_image):
    jpeg = make_image(4)
    broken = jpeg[:3] + b"\x00" * (len(jpeg) - 5) + jpeg[-2:]  # right markers, garbage inside
    assert check_header(broken) is None
    assert check_image(broken, "decode") is not None


def test_decode_errors_are_short():
    with pytest.raises(ValueError) as info:
        decode_rgb(b"\xff\xd8\xff\xe0 truncated")
    assert "\n" not in str(info.value) and ".cpp" not in str(info.value)


def test_16_bit_png_becomes_uint8():
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 6), 65535, dtype=np.uint16)).save(buf, format="PNG")
    img = decode_rgb(buf.getvalue())
    assert img.dtype == torch.uint8 and img.shape == (3, 4, 6) and int(img.max()) == 255
