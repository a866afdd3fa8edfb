"""Samplers of the streaming reader: class-balanced and square-root epochs, end to end."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ltray.config import DataConfig
from ltray.data import read_manifest
from ltray.data.stream import StreamingImageDataset, build_batch_transform, make_loader
from ltray.data.stream.samplers import SAMPLERS, repeat_counts
from ltray.errors import LtrayError

BATCH = 16
# chi-square critical values at alpha = 1e-3 (scipy.stats.chi2.ppf(1 - 1e-3, df)): a correct
# sampler fails a test below with probability 1e-3 for a random seed; the seeds are fixed
CHI2_CRIT_DF5 = 20.515


def _ds(url, **kw):
    args = dict(batch_size=BATCH, shuffle_buffer=64, sampler="class_balanced", decode=False)
    return StreamingImageDataset(url, "train", **{**args, **kw})


def _read(ds, workers, epoch=0, start=0):
    ds.set_epoch(epoch, start_batch=start)
    return list(make_loader(ds, num_workers=workers))


def _labels_by_index(url, split="train") -> np.ndarray:
    m = read_manifest(url)
    return np.concatenate(
        [pq.read_table(Path(url) / s.path, columns=["label"])["label"] for s in m.shards(split)]
    )


def _chi_square(observed: np.ndarray, probs: np.ndarray) -> float:
    expected = observed.sum() * probs
    return float(((observed - expected) ** 2 / expected).sum())


def test_every_registered_sampler_is_a_config_choice():
    choices = typing.get_args(DataConfig.model_fields["sampler"].annotation)
    assert sorted(choices) == SAMPLERS.names()
    assert DataConfig(url="x").sampler == "plain"


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_an_epoch_keeps_n_samples_and_every_draw_is_a_row_of_the_split(name):
    labels = np.repeat(np.arange(4), [50, 20, 5, 1])
    repeats = repeat_counts(name, labels, 4, seed=3, epoch=1)
    if name == "plain":
        assert repeats is None
    else:
        assert len(repeats) == len(labels) and repeats.sum() == len(labels) and repeats.min() >= 0


def test_unknown_sampler_is_refused_naming_the_valid_ones(synth_ds):
    with pytest.raises(LtrayError, match="unknown sampler 'balanced'.*class_balanced"):
        _ds(synth_ds, sampler="balanced")


def _class_histogram(url, sampler, epochs, seed):
    """Classes of the samples one rank (all rows) emits over ``epochs`` epochs."""
    labels = _labels_by_index(url)
    ds = _ds(url, sampler=sampler, seed=seed)
    hist = np.zeros(read_manifest(url).num_classes, dtype=np.int64)
    for epoch in range(epochs):
        for batch in _read(ds, workers=0, epoch=epoch):
            index = batch["index"].numpy()
            assert (labels[index] == batch["label"].numpy()).all()
            hist += np.bincount(batch["label"].numpy(), minlength=len(hist))
    return hist


def _expected(url, sampler):
    counts = np.asarray(read_manifest(url).class_counts("train"), dtype=np.float64)
    weights = {"class_balanced": np.ones_like(counts), "square_root": np.sqrt(counts)}[sampler]
    return weights / weights.sum()


@pytest.mark.parametrize("sampler", ["class_balanced", "square_root"])
def test_class_histogram_over_many_epochs_matches_the_sampler(synth_ds, sampler):
    # 40 epochs x 303 draws, each epoch's draws i.i.d. from p_c (a multinomial in all), so
    # Pearson's statistic is chi-square with 6 - 1 dof; alpha = 1e-3 with seed 11
    hist = _class_histogram(synth_ds, sampler, epochs=40, seed=11)
    assert hist.sum() == 40 * read_manifest(synth_ds).num_rows("train")
    assert _chi_square(hist, _expected(synth_ds, sampler)) < CHI2_CRIT_DF5
    # the test has power: the plain order's histogram (proportions n_c / N) fails it
    plain = np.asarray(read_manifest(synth_ds).class_counts("train")) * 40
    assert _chi_square(plain, _expected(synth_ds, sampler)) > 10 * CHI2_CRIT_DF5


@pytest.mark.parametrize("sampler", ["class_balanced", "square_root"])
def test_two_ranks_two_workers_split_the_epochs_draws_exactly(synth_ds, sampler):
    labels = _labels_by_index(synth_ds)
    n = len(labels)
    emitted = []
    for rank in range(2):
        ds = _ds(synth_ds, rank=rank, world_size=2, seed=5, sampler=sampler)
        batches = _read(ds, workers=2, epoch=3)
        assert len(batches) == ds.num_batches(2)
        for batch in batches:  # rows only from their class
            assert (labels[batch["index"].numpy()] == batch["label"].numpy()).all()
            emitted += batch["index"].tolist()
    repeats = ds.repeats()
    assert np.array_equal(np.bincount(emitted, minlength=n), repeats)
    assert repeats.max() > 1 and (repeats == 0).any()  # drawn with replacement, not a permutation


def test_the_same_seed_and_epoch_repeat_the_order_and_others_change_it(synth_ds):
    def indices(seed, epoch):
        return [b["index"].tolist() for b in _read(_ds(synth_ds, seed=seed), 0, epoch)]

    first = indices(1, 2)
    assert first == indices(1, 2)
    assert first != indices(1, 3)
    assert first != indices(2, 2)
    ds = _ds(synth_ds, seed=1)
    ds.set_epoch(2)
    again = _ds(synth_ds, seed=1)
    again.set_epoch(2)
    assert np.array_equal(ds.repeats(), again.repeats())


@pytest.mark.parametrize("sampler", ["class_balanced", "square_root"])
def test_resume_at_any_batch_replays_the_rest_of_the_epoch_exactly(synth_ds, sampler):
    transform = build_batch_transform("cifar", 16, True)
    for rank in range(2):
        ds = _ds(
            synth_ds, rank=rank, world_size=2, seed=9, sampler=sampler, equal_ranks=True,
            decode=True, transform=transform,
        )  # fmt: skip
        whole = _read(ds, workers=2, epoch=1)
        nb = len(whole)
        for start in (1, nb // 2, nb - 1):
            tail = _read(ds, workers=2, epoch=1, start=start)
            assert len(tail) == nb - start
            for got, want in zip(tail, whole[start:], strict=True):
                assert torch.equal(got["index"], want["index"])
                assert torch.equal(got["label"], want["label"])
                assert torch.equal(got["image"], want["image"])


def test_evaluation_splits_and_plain_read_every_row_once(synth_ds):
    ds = _ds(synth_ds, sampler="plain")
    assert ds.repeats() is None
    seen = [i for b in _read(ds, workers=0) for i in b["index"].tolist()]
    assert sorted(seen) == list(range(read_manifest(synth_ds).num_rows("train")))


def test_local_training_with_class_balanced_sampling_completes(tmp_path, monkeypatch):
    from train_support import make_job, run_cli

    from ltray.train import input_path as trainer_module
    from ltray.train.launcher import run_job

    data = str(tmp_path / "tiny")
    run_cli(
        "prepare", "synthetic", data, "--classes", "4", "--imbalance", "6", "--image-size",
        "32", "--seed", "1", "--n-max", "48", "--test-per-class", "8",
    )  # fmt: skip
    built = []

    class Recording(StreamingImageDataset):
        def __init__(self, url, split, **kw):
            super().__init__(url, split, **kw)
            built.append((split, self.sampler))

    monkeypatch.setattr(trainer_module, "StreamingImageDataset", Recording)
    job = make_job(data, tmp_path, data={"sampler": "class_balanced", "loader_workers": 2})
    final = run_job(job, local=True).metrics
    assert np.isfinite(final["test/acc"])
    # the training split reads class-balanced, evaluation every row once
    assert ("train", "class_balanced") in built and ("test", "plain") in built
    assert {sampler for split, sampler in built if split == "train"} == {"class_balanced"}


def test_a_label_outside_the_manifests_classes_is_refused_naming_the_row(synth_ds):
    manifest = read_manifest(synth_ds)
    labels = _labels_by_index(synth_ds)
    manifest.classes = manifest.classes[:5]  # the rows of class 5 now lie outside
    row = int(np.flatnonzero(labels == 5)[0])
    with pytest.raises(LtrayError, match=rf"split 'train': row {row} has label 5, outside"):
        _ds(synth_ds, manifest=manifest)
