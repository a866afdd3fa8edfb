import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ltray.data import read_manifest
from ltray.data.prepare import sources
from ltray.data.prepare.orchestrator import PrepareOptions, prepare_from
from ltray.data.stream import (
    StreamingImageDataset,
    build_batch_transform,
    epoch_batches,
    make_loader,
)
from ltray.errors import LtrayError

BATCH = 16


def _ds(url, **kw):
    args = dict(
        batch_size=BATCH, transform=build_batch_transform("cifar", 16, True), shuffle_buffer=64
    )
    return StreamingImageDataset(url, "train", **{**args, **kw})


def _read(ds, workers, epoch=0, start=0):
    ds.set_epoch(epoch, start_batch=start)
    return list(make_loader(ds, num_workers=workers))


def _rows_by_index(url, split="train"):
    m = read_manifest(url)
    rows = []
    for shard in m.shards(split):
        rows += pq.read_table(Path(url) / shard.path).to_pylist()
    return rows


def test_batches_are_collated_tensors(synth_ds):
    batch = next(iter(make_loader(_ds(synth_ds), num_workers=0)))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (BATCH, 3, 16, 16)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (BATCH,)
    assert batch["index"].dtype == torch.int64 and batch["index"].shape == (BATCH,)


def test_labels_follow_the_global_row_index(synth_ds):
    rows = _rows_by_index(synth_ds)
    for batch in _read(_ds(synth_ds), workers=2):
        for i, label in zip(batch["index"].tolist(), batch["label"].tolist(), strict=True):
            assert rows[i]["label"] == label


def test_two_ranks_two_workers_read_every_row_once_per_epoch(synth_ds):
    n = read_manifest(synth_ds).num_rows("train")
    per_epoch = []
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            ds = _ds(synth_ds, rank=rank, world_size=2, seed=7)
            batches = _read(ds, workers=2, epoch=epoch)
            assert len(batches) == ds.num_batches(2)
            seen.append([i for b in batches for i in b["index"].tolist()])
        flat = seen[0] + seen[1]
        assert sorted(flat) == list(range(n))  # every row exactly once across ranks
        assert abs(len(seen[0]) - len(seen[1])) <= 1
        per_epoch.append(seen)
    assert per_epoch[0] != per_epoch[1]  # two epochs differ in order
    again = [
        i
        for rank in range(2)
        for b in _read(_ds(synth_ds, rank=rank, world_size=2, seed=7), workers=2, epoch=1)
        for i in b["index"].tolist()
    ]
    assert again == per_epoch[1][0] + per_epoch[1][1]  # the same seed repeats it


@pytest.mark.parametrize("read_ahead", [0, 1, 4])
def test_loader_order_is_the_documented_pure_function(synth_ds, read_ahead):
    m = read_manifest(synth_ds)
    layout = [list(s.row_groups) for s in m.shards("train")]
    for workers in (0, 1, 3):
        ds = _ds(synth_ds, rank=1, world_size=2, seed=3, read_ahead=read_ahead)
        got = [b["index"].tolist() for b in _read(ds, workers=workers, epoch=2)]
        want = epoch_batches(
            layout, num_workers=max(1, workers), seed=3, epoch=2, rank=1, world_size=2,
            batch_size=BATCH, shuffle=True, shuffle_buffer=64,
        )  # fmt: skip
        assert got == [w.tolist() for w in want]


@pytest.mark.parametrize("read_ahead", [1, 4])
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_mid_epoch_replays_the_exact_tail(synth_ds, workers, read_ahead):
    ds = _ds(synth_ds, seed=11, read_ahead=read_ahead)
    full = _read(ds, workers, epoch=4)
    total = ds.num_batches(workers)
    assert len(full) == total
    for start in (1, 5, total // 2 + 1, total - 1, total):
        tail = _read(ds, workers, epoch=4, start=start)
        assert len(tail) == total - start
        for a, b in zip(full[start:], tail, strict=True):
            assert torch.equal(a["index"], b["index"])  # no missing, duplicate or reordered row
            assert torch.equal(a["image"], b["image"])  # and augmented identically
    assert sorted(i for b in full for i in b["index"].tolist()) == list(range(303))


def test_drop_last_gives_every_rank_the_same_full_batches(synth_ds):
    counts = []
    for rank in range(3):
        ds = _ds(synth_ds, rank=rank, world_size=3, drop_last=True)
        batches = _read(ds, workers=2)
        assert all(len(b["index"]) == BATCH for b in batches)
        counts.append(len(batches))
        assert ds.num_batches(2) == len(batches)
    assert counts == [6, 6, 6]  # floor(floor(303 / 3) / 16)


def test_eval_order_is_file_order_and_decode_false_gives_bytes(synth_ds):
    ds = StreamingImageDataset(synth_ds, "test", batch_size=25, shuffle=False, decode=False)
    batches = list(make_loader(ds, num_workers=0))
    assert [i for b in batches for i in b["index"].tolist()] == list(range(60))
    rows = _rows_by_index(synth_ds, "test")
    assert batches[0]["image"][3] == rows[3]["image"]


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_truncated_shard_is_named(synth_ds, tmp_path):
    url = _copy(synth_ds, tmp_path)
    shard = url / "train" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    for workers in (0, 2):
        with pytest.raises(LtrayError) as info:
            _read(_ds(str(url)), workers)
        message = str(info.value)
        assert "shard train/part-00001.parquet" in message and "truncated" in message
        assert "\n" not in message  # one line, also from a loader worker


def test_sha256_mismatch_is_named_when_verifying(synth_ds, tmp_path):
    url = _copy(synth_ds, tmp_path)
    shard = url / "train" / "part-00002.parquet"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    shard.write_bytes(bytes(blob))
    with pytest.raises(LtrayError, match=r"shard train/part-00002.parquet: sha256 differs"):
        _read(_ds(str(url), verify_sha256=True), workers=2)


def test_missing_shard_and_missing_manifest(synth_ds, tmp_path):
    url = _copy(synth_ds, tmp_path)
    (url / "train" / "part-00000.parquet").unlink()
    with pytest.raises(LtrayError, match="shard train/part-00000.parquet is missing"):
        _read(_ds(str(url)), workers=0)
    (url / "manifest.json").unlink()
    with pytest.raises(LtrayError, match="half-written"):
        _ds(str(url))


def test_corrupt_image_at_read_names_shard_and_row(make_tree, make_image, tmp_path):
    src = make_tree(tmp_path / "src", {"": {"a": 3, "b": 3}})
    jpeg = make_image(99)
    (src / "b" / "0001.jpg").write_bytes(jpeg[:3] + b"\x00" * (len(jpeg) - 5) + jpeg[-2:])
    out = tmp_path / "out"
    options = PrepareOptions(workers=1, validate="header")  # header checks cannot see this one
    prepare_from(lambda s: sources.imagefolder(str(src), s), str(out), options)
    for workers in (0, 2):
        with pytest.raises(LtrayError) as info:
            _read(_ds(str(out), batch_size=2), workers)
        assert str(info.value).startswith("shard train/part-00000.parquet: row 'b/0001.jpg'")


def test_bad_arguments(synth_ds):
    with pytest.raises(LtrayError, match="rank 2 is not in"):
        _ds(synth_ds, rank=2, world_size=2)
    with pytest.raises(LtrayError, match="batch_size"):
        _ds(synth_ds, batch_size=0)
    with pytest.raises(LtrayError, match="no split 'val'"):
        StreamingImageDataset(synth_ds, "val", batch_size=4)


@pytest.mark.parametrize("sampler", ["plain", "class_balanced", "square_root"])
def test_reader_holds_a_bounded_number_of_rows(synth_ds, monkeypatch, sampler):
    """Never the whole split, also when a sampler repeats rows: at most the shuffle buffer plus
    the row groups in flight."""
    from ltray.data.stream import dataset as reader

    peak = [0]
    original = reader.StreamingImageDataset._collate

    def spy(self, rows, batch_id, held):
        peak[0] = max(peak[0], len(held))
        return original(self, rows, batch_id, held)

    monkeypatch.setattr(reader.StreamingImageDataset, "_collate", spy)
    _read(_ds(synth_ds, shuffle_buffer=32, sampler=sampler), workers=0)
    assert 0 < peak[0] <= 32 + 2 * 16
    assert np.isfinite(peak[0])
