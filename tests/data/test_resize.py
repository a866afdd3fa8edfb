"""Prepare-time resize (issue 14, item 1): ``ltray prepare ... --resize-shorter N``."""

import io
import json

import numpy as np
import pytest
from data_support import error_line, run_prepare, split_rows
from PIL import Image

from ltray.data import read_manifest
from ltray.data.decode import decode_rgb, sniff_format
from ltray.data.prepare import orchestrator, sources
from ltray.data.prepare.fingerprint import fingerprints, legacy_fingerprint
from ltray.data.prepare.image_refs import FileRef, Item
from ltray.data.prepare.orchestrator import PrepareOptions, prepare_from
from ltray.data.prepare.resize import FILTER, Resize, resize_image, resize_option, resized_size
from ltray.data.shards import ShardLayout
from ltray.errors import LtrayError

RED, BLUE = (220, 30, 30), (30, 30, 220)
# a flat colour survives the resize exactly; baseline JPEG at quality >= 80 moves a flat 8x8
# block's value by the rounding of its quantised DC term and the colour conversion: a few levels
FLAT_TOLERANCE = 4


def encode(pixels: np.ndarray, fmt: str = "JPEG", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **save)
    return buf.getvalue()


def halves(height: int, width: int) -> np.ndarray:
    """Left half red, right half blue: which way up an image is shows in its pixels."""
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:, : width // 2], pixels[:, width // 2 :] = RED, BLUE
    return pixels


def colour_at(chw, row: float, col: float) -> np.ndarray:
    """The pixel at fractional position (row, col) of a [3, H, W] tensor."""
    _, h, w = chw.shape
    return chw[:, int(row * (h - 1)), int(col * (w - 1))].numpy().astype(int)


# --- the resize itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "shorter", "expected"),
    [((90, 60), 24, (36, 24)), ((50, 120), 20, (20, 48)), ((64, 64), 16, (16, 16)),
     ((333, 100), 30, (100, 30)), ((100, 301), 10, (10, 30)), ((5000, 2), 1, (2500, 1))],
)  # fmt: skip
def test_resized_size_keeps_the_aspect_ratio_to_the_nearest_pixel(size, shorter, expected):
    width, height = size
    assert resized_size(width, height, shorter) == expected
    new_w, new_h = expected
    assert min(new_w, new_h) == shorter
    # the longer side is the exact ratio, rounded: within half a pixel of it
    assert abs(max(new_w, new_h) - max(size) * shorter / min(size)) <= 0.5


@pytest.mark.parametrize(("height", "width"), [(60, 90), (120, 50)])
def test_a_larger_image_comes_out_with_its_shorter_side_n_as_jpeg_the_right_way_up(height, width):
    source = encode(halves(height, width), "PNG")
    out = resize_image(source, Resize(24, 85))
    assert sniff_format(out) == "jpeg"
    with Image.open(io.BytesIO(out)) as image:
        assert image.mode == "RGB" and image.format == "JPEG"
        assert not image.info.get("progressive")  # baseline
    chw = decode_rgb(out)
    w, h = resized_size(width, height, 24)
    assert chw.shape == (3, h, w)
    assert np.abs(colour_at(chw, 0.5, 0.1) - RED).max() <= FLAT_TOLERANCE
    assert np.abs(colour_at(chw, 0.5, 0.9) - BLUE).max() <= FLAT_TOLERANCE


@pytest.mark.parametrize(("height", "width"), [(24, 24), (20, 300), (300, 11)])
def test_an_image_at_or_below_n_keeps_its_bytes(height, width):
    source = encode(halves(height, width))
    assert resize_image(source, Resize(24)) == source


def test_an_exif_rotated_image_keeps_the_orientation_training_decodes():
    """decode_rgb (training) ignores EXIF orientation: the resized image must hold the same
    pixels, so it is not rotated, and it carries no orientation tag a viewer would apply."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    source = encode(halves(40, 80), exif=exif.tobytes())
    with Image.open(io.BytesIO(source)) as image:
        assert image.getexif().get(0x0112) == 6  # the premise: the source says rotate
    trained = decode_rgb(source)
    assert trained.shape == (3, 40, 80)  # as stored: training does not rotate it
    out = resize_image(source, Resize(20))
    resized = decode_rgb(out)
    assert resized.shape == (3, 20, 40)
    for col in (0.1, 0.9):
        assert np.abs(colour_at(resized, 0.5, col) - colour_at(trained, 0.5, col)).max() <= 8
    with Image.open(io.BytesIO(out)) as image:
        assert 0x0112 not in image.getexif()


@pytest.mark.parametrize(
    ("pixels", "fmt", "expected"),
    [
        (np.full((40, 60, 4), (200, 100, 50, 80), np.uint8), "PNG", (200, 100, 50)),  # RGBA
        (np.full((40, 60), 170, np.uint8), "PNG", (170, 170, 170)),  # grey
        (np.full((40, 60), 170, np.uint8), "JPEG", (170, 170, 170)),  # grey JPEG
        (np.full((40, 60), 120 * 257, np.uint16), "PNG", (120, 120, 120)),  # 16-bit grey
    ],
    ids=["rgba-png", "grey-png", "grey-jpeg", "grey16-png"],
)
def test_png_rgba_grey_and_16_bit_sources_become_rgb_jpeg_with_the_decoded_colours(
    pixels, fmt, expected
):
    source = encode(pixels, fmt)
    assert decode_rgb(source)[:, 0, 0].tolist() == list(expected)  # what training sees
    out = resize_image(source, Resize(20, 95))
    with Image.open(io.BytesIO(out)) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (30, 20))
    assert np.abs(colour_at(decode_rgb(out), 0.5, 0.5) - expected).max() <= FLAT_TOLERANCE


def test_an_image_that_does_not_decode_is_a_value_error():
    with pytest.raises(ValueError):
        resize_image(b"\xff\xd8\xff" + b"\x00" * 200, Resize(8))


def test_resize_options_are_checked():
    assert resize_option(None, None) is None
    assert resize_option(256, None) == Resize(256, 90)
    assert resize_option(320, 75).record() == {"shorter": 320, "jpeg_quality": 75, "filter": FILTER}
    with pytest.raises(LtrayError, match="--jpeg-quality applies to resized images only"):
        resize_option(None, 80)
    for shorter in (0, -5):
        with pytest.raises(LtrayError, match=f"--resize-shorter must be .* got {shorter}"):
            resize_option(shorter, None)
    for quality in (0, 101):
        with pytest.raises(
            LtrayError, match=f"--jpeg-quality must be in \\[1, 100\\], got {quality}"
        ):
            resize_option(64, quality)


def test_the_resize_is_in_the_fingerprint_and_absent_without_it():
    splits = {"train": [Item("a/0.jpg", 0, FileRef("/s/a/0.jpg"), 10, "10:1")]}
    args = ("imagefolder", {"seed": 0}, ["a"], splits, ShardLayout(), "decode")
    plain = fingerprints(*args)
    assert "resize" not in plain["recipe"]  # data sets prepared before it keep their identity
    assert fingerprints(*args, None) == plain
    by_n = {n: fingerprints(*args, Resize(n))["fingerprint"] for n in (256, 320)}
    assert len({plain["fingerprint"], *by_n.values()}) == 3
    assert fingerprints(*args, Resize(256, 80))["fingerprint"] != by_n[256]
    # a manifest an older ltray wrote (no resize then) never matches a resized prepare
    assert legacy_fingerprint(*args, Resize(256)) != legacy_fingerprint(*args)


# --- ltray prepare --resize-shorter ------------------------------------------------------------


def _source(root):
    """Six JPEGs in two classes: five of 25-44 px on the shorter side, one of 16 px."""
    rng = np.random.default_rng(0)
    sizes = {"ant": [(40, 40), (32, 48), (30, 30)], "bee": [(44, 36), (16, 16), (25, 60)]}
    for name, shapes in sizes.items():
        (root / name).mkdir(parents=True)
        for i, shape in enumerate(shapes):
            pixels = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
            (root / name / f"{i:04d}.jpg").write_bytes(encode(pixels, quality=95))
    return root


def test_prepare_resizes_records_it_and_reports_the_bytes(tmp_path):
    src = _source(tmp_path / "src")
    out = tmp_path / "out"
    result = run_prepare("imagefolder", src, out, "--resize-shorter", 24, "--jpeg-quality", 80)
    assert result.exit_code == 0, result.output
    m = read_manifest(str(out))
    rows = {row["id"]: row for row in split_rows(out, "train")}
    source = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in src.glob("*/*.jpg")}
    assert set(rows) == set(source)
    written = sum(len(row["image"]) for row in rows.values())
    read = sum(len(data) for data in source.values())
    tally = {"images": 6, "resized": 5, "source_bytes": read, "bytes": written}
    assert m.resize == {
        "shorter": 24, "jpeg_quality": 80, "filter": FILTER, **tally, "splits": {"train": tally}
    }  # fmt: skip
    assert written < read
    assert (
        f"resized 5 of 6 images to a shorter side of 24 px (JPEG quality 80): image bytes "
        f"{read / 1024:.1f} KiB -> {written / 1024:.1f} KiB "
    ) in result.stdout
    for name, row in rows.items():
        chw = decode_rgb(row["image"])
        with Image.open(io.BytesIO(source[name])) as original:
            width, height = original.size
        if name == "bee/0001.jpg":  # 16 px: left as it was
            assert row["image"] == source[name]
        else:
            assert sniff_format(row["image"]) == "jpeg" and row["image"] != source[name]
            w, h = resized_size(width, height, 24)
            assert chw.shape == (3, h, w) and min(h, w) == 24
    # the same command again: the same data set; older manifests (no "resize") still read
    assert "nothing to do" in run_prepare("imagefolder", src, out, "--resize-shorter", 24,
                                  "--jpeg-quality", 80).stdout  # fmt: skip
    data = json.loads((out / "manifest.json").read_text())
    assert data["resize"]["shorter"] == 24
    del data["resize"]
    (out / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(str(out)).resize is None


def test_another_n_or_none_into_the_same_folder_is_another_data_set(tmp_path):
    src = _source(tmp_path / "src")
    out = tmp_path / "out"
    assert run_prepare("imagefolder", src, out, "--resize-shorter", 24).exit_code == 0
    first = read_manifest(str(out))
    line = error_line(run_prepare("imagefolder", src, out, "--resize-shorter", 32))
    assert (
        "already holds a different data set: resize differs (shorter side 24 px, JPEG quality "
        "90 -> shorter side 32 px, JPEG quality 90); pass --overwrite to replace it"
    ) in line
    line = error_line(run_prepare("imagefolder", src, out))
    assert "resize differs (shorter side 24 px, JPEG quality 90 -> none, original bytes)" in line
    line = error_line(
        run_prepare("imagefolder", src, out, "--resize-shorter", 24, "--jpeg-quality", 70)
    )
    assert (
        "resize differs (shorter side 24 px, JPEG quality 90 -> shorter side 24 px, JPEG " in line
    )
    result = run_prepare("imagefolder", src, out, "--resize-shorter", 32, "--overwrite")
    assert result.exit_code == 0, result.output
    second = read_manifest(str(out))
    assert second.fingerprint != first.fingerprint
    assert (second.resize["shorter"], second.resize["resized"]) == (32, 2)  # 40 and 36 px > 32
    assert max(min(decode_rgb(r["image"]).shape[1:]) for r in split_rows(out, "train")) == 32
    plain = run_prepare("imagefolder", src, tmp_path / "plain")
    assert plain.exit_code == 0 and "resized" not in plain.stdout
    unresized = read_manifest(str(tmp_path / "plain"))
    assert unresized.resize is None
    assert len({first.fingerprint, second.fingerprint, unresized.fingerprint}) == 3


def test_a_resumed_resized_prepare_keeps_the_byte_report(tmp_path, monkeypatch):
    src = _source(tmp_path / "src")
    options = PrepareOptions(
        layout=ShardLayout(shard_rows=2), workers=1, resize=Resize(24, 80)
    )  # fmt: skip

    def prepare(out):
        return prepare_from(lambda s: sources.imagefolder(str(src), s), str(out), options)

    reference = prepare(tmp_path / "reference").manifest

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(orchestrator, "move_into_place", killed)
        with pytest.raises(KeyboardInterrupt):
            prepare(tmp_path / "out")
    resumed = prepare(tmp_path / "out")
    assert resumed.reused == 3 and resumed.written == 0
    assert resumed.manifest.resize == reference.resize
    assert resumed.manifest.resize["resized"] == 5


def test_an_image_that_only_fails_when_resized_is_a_bad_image(tmp_path):
    src = _source(tmp_path / "src")
    (src / "ant" / "0003.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 40 + b"\xff\xd9")
    out = tmp_path / "out"
    args = ("--validate", "header", "--max-bad-fraction", "0.2")  # the header looks whole
    result = run_prepare("imagefolder", src, out, "--resize-shorter", 24, *args)
    assert result.exit_code == 0, result.output
    assert "train: ant/0003.jpg: does not decode: " in result.stdout
    assert read_manifest(str(out)).resize["images"] == 6


def test_resize_option_errors_are_one_line_and_touch_nothing(tmp_path):
    src = _source(tmp_path / "src")
    out = tmp_path / "out"
    line = error_line(run_prepare("imagefolder", src, out, "--jpeg-quality", 80))
    assert (
        line == "error: --jpeg-quality applies to resized images only: pass --resize-shorter N too"
    )
    for shorter in ("0", "-1"):
        line = error_line(run_prepare("imagefolder", src, out, "--resize-shorter", shorter))
        assert line == f"error: --resize-shorter must be a side in pixels >= 1, got {shorter}"
    line = error_line(run_prepare("synthetic", out, "--resize-shorter", 8, "--jpeg-quality", 0))
    assert line == "error: --jpeg-quality must be in [1, 100], got 0"
    assert not out.exists()
