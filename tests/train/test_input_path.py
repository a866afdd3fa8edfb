"""The three input paths give the same batches; the GPU path's thread, errors and fallback.

Self-contained (no conftest fixtures, no Ray, no MLflow): bench/gpu_check.sh runs this file on
a bare GPU box with ``--noconftest``, where the CUDA cases run too.
"""

from __future__ import annotations

import collections
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from ltray.config import DataConfig
from ltray.data import read_manifest
from ltray.data.prepare import PrepareOptions, prepare, prepare_from, sources
from ltray.data.prepare.shard_task import ShardLayout
from ltray.errors import LtrayError
from ltray.train import input_path
from ltray.train.input_path import auto_loader_workers, open_split

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PATHS = {
    "cpu": {"decode": "cpu", "on_device": False},
    "gpu": {"decode": "gpu", "on_device": False},
    "device": {"on_device": True},
}


@pytest.fixture(scope="module")
def data_url(tmp_path_factory) -> str:
    """Synthetic, 5 classes, 16 px, several shards of 16-row row groups (many units to order)."""
    out = tmp_path_factory.mktemp("input") / "ds"
    plan = sources.synthetic(classes=5, n_max=60, imbalance=5.0, image_size=16, test_per_class=4)
    layout = ShardLayout(shard_rows=64, shard_bytes=1 << 30, row_group_rows=16)
    prepare(plan, str(out), PrepareOptions(layout=layout, workers=1))
    return str(out)


def _open(url, device, path, workers=0, **kw):
    data = DataConfig(url=url, image_size=16, augment="cifar", **PATHS[path])
    return open_split(
        data, read_manifest(url), "train", train=True, device=torch.device(device),
        workers=workers, batch_size=8, rank=0, world_size=1, seed=3, **kw,
    )  # fmt: skip


def _epoch(source, epoch=1, start=2):
    return [(b["image"].cpu(), b["label"].cpu()) for b in source.epoch(epoch, start)]


@pytest.mark.parametrize("device", DEVICES)
def test_every_path_yields_the_same_augmented_batches(data_url, device):
    """Same rows, same order, same crops and flips on every path: a worker's path changes its
    speed, not its numbers (resumed mid-epoch here). On CUDA, nvjpeg's decode may differ from
    libjpeg's by an IDCT rounding, so the GPU path is compared within that."""
    reference = _epoch(_open(data_url, "cpu", "cpu", workers=2))
    assert len(reference) > 5
    for path in ("gpu", "device"):
        source = _open(data_url, device, path, workers=2)
        assert source.path == path
        got = _epoch(source)
        assert len(got) == len(reference)
        for (image, label), (ref_image, ref_label) in zip(got, reference, strict=True):
            assert torch.equal(label, ref_label)
            if path == "gpu" and device == "cuda":
                # nvjpeg upsamples 4:2:0 chroma by replication, libjpeg by interpolation: on
                # these saturated stripes that moves pixels by tens of levels (mean 5.3 on an
                # H100). The crop geometry must still agree: where the reference has cifar's
                # zero padding, so does this batch, and hardly anywhere else
                padding = (ref_image == 0).all(dim=1)
                zero = (image == 0).all(dim=1)
                assert padding.any() and zero[padding].all(), path
                assert zero.sum() <= padding.sum() + zero.numel() // 100, path
            else:
                assert torch.equal(image, ref_image), path


def test_on_device_auto_holds_nothing_on_the_cpu_and_true_holds_it(data_url):
    assert _open(data_url, "cpu", "cpu").path == "cpu"
    data = DataConfig(url=data_url, image_size=16)  # decode and on_device: auto
    auto = open_split(
        data, read_manifest(data_url), "test", train=False, device=torch.device("cpu"),
        workers=0, batch_size=8, rank=0, world_size=1, seed=0,
    )  # fmt: skip
    assert auto.path == "cpu" and auto.held is None
    held = _open(data_url, "cpu", "device")
    assert held.held is not None and held.held.images.shape[1:] == (3, 16, 16)


def test_on_device_true_refuses_a_set_it_cannot_hold_and_auto_streams_it(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for label, size in (("a", 16), ("b", 20)):
        (src / label).mkdir(parents=True)
        for i in range(3):
            buf = io.BytesIO()
            Image.new("RGB", (size, size), (40 * i, 90, 10)).save(buf, format="JPEG")
            (src / label / f"{i}.jpg").write_bytes(buf.getvalue())
    out = str(tmp_path / "mixed")
    prepare_from(lambda s: sources.imagefolder(str(src), s), out, PrepareOptions(workers=1))
    with pytest.raises(LtrayError, match="data.on_device is true, but split 'train': row"):
        _open(out, "cpu", "device")
    # auto on a GPU (simulated: a CPU device that "fits") streams it, and says why
    lines = []
    monkeypatch.setattr(input_path, "_wants_held", lambda data, device: True)
    monkeypatch.setattr(input_path, "fits", lambda device, nbytes: (True, ""))
    data = DataConfig(url=out, image_size=16, augment="cifar", decode="cpu")
    source = input_path._held(
        data.model_copy(update={"on_device": "auto"}), read_manifest(out), "train",
        torch.device("cpu"), 0, {"batch_size": 2}, lines.append,
    )  # fmt: skip
    assert source is None
    assert lines and lines[0].startswith("[ltray] split 'train' is streamed: split 'train'")


def test_the_gpu_path_names_an_undecodable_image(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(4):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (60 * i, 20, 200)).save(buf, format="JPEG")
        jpeg = buf.getvalue()
        if i == 2:  # a whole header and end marker round a scan of zeros
            jpeg = jpeg[:3] + b"\x00" * (len(jpeg) - 5) + jpeg[-2:]
        (src / "a" / f"{i}.jpg").write_bytes(jpeg)
    (src / "b").mkdir()
    (src / "b" / "0.jpg").write_bytes((src / "a" / "0.jpg").read_bytes())
    out = str(tmp_path / "out")
    options = PrepareOptions(workers=1, validate="header")  # header checks cannot see it
    prepare_from(lambda s: sources.imagefolder(str(src), s), out, options)
    source = _open(out, "cpu", "gpu")
    with pytest.raises(LtrayError) as info:
        _epoch(source, epoch=0, start=0)
    assert str(info.value).startswith("shard train/part-00000.parquet: row 'a/2.jpg': image ")


@pytest.mark.parametrize("path", ["cpu", "gpu"])
@pytest.mark.parametrize("device", DEVICES)
def test_the_next_epochs_loader_starts_during_this_epoch_and_changes_no_batch(
    data_url, device, path
):
    """``epoch(0, then=1)`` starts epoch 1's loader processes while epoch 0's last batches are
    consumed; ``epoch(1)`` then takes that loader, and both epochs' batches are those of
    loaders started at each epoch's beginning (the GPU path's augmentation keeps epoch 0's
    seeds for the batches it decodes after epoch 1's loader started)."""
    if path == "cpu" and device == "cuda":
        pytest.skip("the cpu path yields the same batches whatever the device")
    expected = {e: _epoch(_open(data_url, device, path, workers=2), e, 0) for e in (0, 1)}
    source = _open(data_url, device, path, workers=2)
    got, opened_at = [], []
    for batch in source.epoch(0, then=1):
        opened_at.append(list(source.opened))
        got.append((batch["image"].cpu(), batch["label"].cpu()))
    lead = 2 * input_path.NEXT_EPOCH_LEAD  # batches a worker, two workers
    assert opened_at[-lead - 1] == [(0, 0)]
    assert opened_at[-lead] == [(0, 0), (1, 0)]  # started with `lead` batches still to go
    got_next = _epoch(source, 1, 0)
    assert source.opened == [(0, 0), (1, 0)]  # epoch 1 read from the loader started ahead
    for epoch, batches in ((0, got), (1, got_next)):
        assert len(batches) == len(expected[epoch])
        for (image, label), (ref_image, ref_label) in zip(batches, expected[epoch], strict=True):
            assert torch.equal(label, ref_label), epoch
            assert torch.equal(image, ref_image), epoch


def test_a_loader_started_for_an_epoch_that_does_not_come_is_stopped(data_url):
    import multiprocessing

    source = _open(data_url, "cpu", "cpu", workers=2)
    for _ in source.epoch(0, then=1):
        pass
    assert len(multiprocessing.active_children()) == 2  # epoch 1's, started ahead
    batches = source.epoch(3)  # a resume elsewhere: epoch 1 is not coming
    assert source.opened == [(0, 0), (1, 0), (3, 0)]
    assert len(multiprocessing.active_children()) == 2  # epoch 3's only
    first = next(batches)
    assert torch.equal(first["label"], _epoch(_open(data_url, "cpu", "cpu", workers=2), 3, 0)[0][1])
    batches.close()
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_close_stops_the_loader_started_ahead(data_url, path):
    import multiprocessing

    source = _open(data_url, "cpu", path, workers=2)
    for _ in source.epoch(0, then=1):
        pass
    assert len(multiprocessing.active_children()) == 2
    source.close()
    assert multiprocessing.active_children() == []
    source.close()  # nothing left to stop: a second close is harmless


def test_no_loader_is_started_ahead_without_worker_processes_or_a_next_epoch(data_url):
    for workers, then in ((0, 1), (2, None)):
        source = _open(data_url, "cpu", "gpu", workers=workers)
        assert len(list(source.epoch(0, then=then))) > 0
        assert source.opened == [(0, 0)], (workers, then)


def test_stopping_early_stops_the_decode_thread_and_its_loader(data_url):
    def decoding() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "ltray-gpu-decode"]

    source = _open(data_url, "cpu", "gpu", workers=1)
    batches = source.epoch(0)
    next(batches)
    assert len(decoding()) == 1
    batches.close()
    assert decoding() == []


def test_an_error_in_the_decode_thread_is_raised_in_the_consumer():
    def work(batch):
        if batch["n"] == 2:
            raise LtrayError("batch 2 is bad")
        return batch

    source = iter([{"n": n} for n in range(5)])
    got = []
    with pytest.raises(LtrayError, match="batch 2 is bad"):
        for batch in input_path._prefetched(source, work, torch.device("cpu")):
            got.append(batch["n"])
    assert got == [0, 1]


def test_the_fallback_counter_collects_what_the_gpu_did_not_decode(data_url, monkeypatch):
    from ltray.data.gpu_decode import DecodedBatch, decode_rgb

    def on_cpu_with_reasons(images, device):
        return DecodedBatch([decode_rgb(d) for d in images], collections.Counter(png=len(images)))

    monkeypatch.setattr(input_path, "decode_batch", on_cpu_with_reasons)
    source = _open(data_url, "cpu", "gpu")
    rows = sum(len(label) for _, label in _epoch(source, epoch=0, start=0))
    assert source.fallback == collections.Counter(png=rows)


@pytest.mark.parametrize(
    ("cpus", "local_world", "expected"),
    [(2, 1, 1), (1, 1, 0), (16, 1, 8), (16, 4, 3), (16, 8, 1), (3, 4, 0)],
)
def test_auto_loader_workers_share_the_cpus_and_keep_one(cpus, local_world, expected):
    assert auto_loader_workers(local_world, cpus=cpus) == expected


def test_loader_workers_auto_resolves_from_this_process_affinity():
    import os

    data = DataConfig(url="x", loader_workers="auto")
    cpus = len(os.sched_getaffinity(0))
    assert input_path.loader_workers(data, 1) == max(0, min(8, cpus - 1))
    assert input_path.loader_workers(DataConfig(url="x", loader_workers=3), 1) == 3
    assert np.isscalar(input_path.loader_workers(data, 2))
