"""A split held on the device replays the streaming loader exactly: rows, order, images, seeds."""

from __future__ import annotations

import pytest
import torch

from ltray.data import read_manifest
from ltray.data.prepare import sources
from ltray.data.prepare.orchestrator import PrepareOptions, prepare_from
from ltray.data.stream import StreamingImageDataset, make_loader
from ltray.data.stream.dataset import batch_seed
from ltray.data.stream.device_set import DeviceImageSet, fits, nbytes_needed
from ltray.errors import LtrayError

BATCH = 16
MiB = 1 << 20


def _held(url, workers=0, **kw):
    args = dict(batch_size=BATCH, shuffle_buffer=64)
    return DeviceImageSet(url, "train", device="cpu", num_workers=workers, **{**args, **kw})


def _streamed(url, workers=0, epoch=0, start=0, **kw):
    args = dict(batch_size=BATCH, shuffle_buffer=64)
    ds = StreamingImageDataset(url, "train", **{**args, **kw})
    ds.set_epoch(epoch, start_batch=start)
    return ds, list(make_loader(ds, num_workers=workers))


@pytest.mark.parametrize(
    ("kw", "workers", "epoch", "start"),
    [
        ({"shuffle": False}, 0, 0, 0),
        ({"seed": 5}, 1, 2, 0),
        ({"rank": 1, "world_size": 2, "equal_ranks": True, "seed": 3}, 0, 1, 0),
        ({"rank": 2, "world_size": 3, "drop_last": True}, 1, 0, 0),
        ({"sampler": "class_balanced", "seed": 9}, 0, 3, 4),  # resume with repeated rows
        ({"seed": 11}, 3, 1, 5),  # three loader workers, resumed mid-epoch: rotated workers
    ],
)
def test_batches_are_the_streaming_loaders_row_for_row(synth_ds, kw, workers, epoch, start):
    held = _held(synth_ds, workers, **kw)
    stream, want = _streamed(synth_ds, workers, epoch, start, **kw)
    got = list(held.batches(epoch, start))
    assert held.num_batches() == stream.num_batches(workers)
    assert len(got) == len(want) == held.num_batches() - start > 0
    for position, (a, b) in enumerate(zip(got, want, strict=True), start=start):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["label"], b["label"])
        assert torch.equal(a["image"], b["image"])  # the reader's decoded images
        assert a["batch"] == position  # the canonical index, as the reader seeds with
        assert a["image"].dtype == torch.uint8 and a["index"].device.type == "cpu"


def test_the_transform_gets_the_readers_generator_seed(synth_ds):
    """The batch transform sees, batch by batch, the seed it sees in the streaming reader,
    also after a resume on another rank; its output is what the batch carries."""
    seen: dict[str, list[int]] = {"reader": [], "held": []}

    def recording(into):
        def per_batch(images, generator):
            seen[into].append(generator.initial_seed())
            return torch.stack(list(images))[:, :, 2:10, 2:10]

        return per_batch

    kw = {"rank": 1, "world_size": 2, "equal_ranks": True, "seed": 4}
    held = _held(synth_ds, transform=recording("held"), **kw)
    _, streamed = _streamed(synth_ds, epoch=2, start=3, transform=recording("reader"), **kw)
    got = list(held.batches(2, start_batch=3))
    assert seen["held"] == seen["reader"] and len(seen["held"]) == len(streamed) == len(got)
    assert len(set(seen["held"])) == len(got)  # one generator a batch, each its own seed
    assert seen["held"][0] == batch_seed(4, 2, 1, 3)
    for a, b in zip(got, streamed, strict=True):
        assert torch.equal(a["image"], b["image"])


def test_images_of_different_sizes_are_refused_naming_a_row(make_tree, make_image, tmp_path):
    src = make_tree(tmp_path / "src", {"": {"a": 3, "b": 3}})
    (src / "b" / "0001.jpg").write_bytes(make_image(99, size=20))
    out = tmp_path / "out"
    prepare_from(lambda s: sources.imagefolder(str(src), s), str(out), PrepareOptions(workers=1))
    with pytest.raises(LtrayError) as info:
        DeviceImageSet(str(out), "train", device="cpu", batch_size=2)
    message = str(info.value)
    assert message.startswith("split 'train': row ")  # the odd one or the first row
    assert "3x20x20" in message and "3x12x12" in message
    assert "data.on_device: false" in message


def test_a_label_outside_the_manifests_classes_is_refused_naming_the_row(synth_ds):
    manifest = read_manifest(synth_ds)
    _, batches = _streamed(synth_ds, shuffle=False, decode=False)
    labels = torch.cat([b["label"] for b in batches])
    manifest.classes = manifest.classes[:5]  # the rows of class 5 now lie outside
    row = int(torch.nonzero(labels == 5)[0])
    with pytest.raises(LtrayError, match=rf"split 'train': row {row} has label 5, outside"):
        _held(synth_ds, manifest=manifest)


def test_bad_arguments_are_refused_before_reading(synth_ds):
    with pytest.raises(LtrayError, match="num_workers must be >= 0"):
        _held(synth_ds, workers=-1)
    with pytest.raises(LtrayError, match="rank 2 is not in"):
        _held(synth_ds, rank=2, world_size=2)
    with pytest.raises(LtrayError, match="epoch and start_batch must be >= 0"):
        _held(synth_ds).batches(-1)


def test_nbytes_needed_counts_pixels_and_labels(synth_ds):
    manifest = read_manifest(synth_ds)
    rows = manifest.num_rows("train")
    assert nbytes_needed(manifest, "train", (3, 32, 32)) == rows * (3 * 32 * 32 + 8)


def test_fits_takes_at_most_a_quarter_of_the_free_cuda_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4096 * MiB, 8192 * MiB))
    ok, reason = fits("cuda", 1024 * MiB)
    assert ok and reason == (
        "1,024 MiB is within a quarter of the 4,096 MiB free on cuda (1,024 MiB)"
    )
    ok, reason = fits("cuda:0", 1024 * MiB + 1)
    assert not ok and "over a quarter" in reason
    assert fits("cpu", 1 << 50)[0]  # host memory is not checked


def test_a_set_that_does_not_fit_is_refused_before_it_is_decoded(synth_ds, monkeypatch):
    """The trainer estimates at the training size; the set checks again at the stored one."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 303 * 776 - 4, 0))
    with pytest.raises(LtrayError, match=r"split 'train' of 3x16x16 images does not fit"):
        DeviceImageSet(synth_ds, "train", device="cuda", batch_size=BATCH)
