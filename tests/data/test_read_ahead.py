"""Read-ahead: the order of the units whatever order reads finish in, bounded reads in flight,
errors raised where the caller reads, and no thread left when the caller stops early. (The
epoch order and resume with read-ahead on: tests/data/test_reader.py, parametrized.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ltray.data.stream import StreamingImageDataset
from ltray.data.stream.read_ahead import read_ahead
from ltray.errors import LtrayError


def _read_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ltray-read")]


class _Reads:
    """A read that sleeps a random while and records how many reads ran at once."""

    def __init__(self, seed: int = 0) -> None:
        self.delays = np.random.default_rng(seed).uniform(0, 0.01, 1000)
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, unit: int) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append(unit)
        time.sleep(self.delays[unit])
        with self.lock:
            self.running -= 1
        return unit * 10


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_results_come_in_unit_order_with_at_most_depth_reads_at_once(depth):
    reads = _Reads()
    units = list(np.random.default_rng(1).permutation(40))
    got = list(read_ahead(reads, units, [1] * 40, depth, max_bytes=1 << 30))
    assert got == [u * 10 for u in units]
    assert reads.peak == max(1, depth)  # random delays overlap, so the bound is reached
    assert _read_threads() == []


def test_the_byte_budget_bounds_reads_started_ahead():
    reads = _Reads()
    consumed = 0
    for result in read_ahead(reads, list(range(20)), [100] * 20, depth=8, max_bytes=250):
        consumed += 1
        time.sleep(0.005)
        # the unit held here plus at most 2 x 100 bytes in flight (and never fewer than one)
        assert len(reads.started) <= consumed + 2, result
    assert consumed == 20


def test_an_error_is_raised_in_order_and_stops_the_reads():
    def read(unit):
        if unit == 3:
            raise LtrayError("shard x: cannot read row group 3")
        time.sleep(0.002)
        return unit

    got = []
    with pytest.raises(LtrayError, match="cannot read row group 3"):
        for value in read_ahead(read, list(range(50)), [1] * 50, depth=4, max_bytes=1 << 30):
            got.append(value)
    assert got == [0, 1, 2]
    assert _read_threads() == []


def test_stopping_early_cancels_pending_reads_and_leaves_no_thread():
    reads = _Reads()
    stream = read_ahead(reads, list(range(100)), [1] * 100, depth=4, max_bytes=1 << 30)
    assert [next(stream), next(stream)] == [0, 10]
    stream.close()
    assert _read_threads() == []
    assert len(reads.started) <= 2 + 5  # the two taken, at most depth + 1 submitted beyond


def test_a_dataset_iterator_closed_mid_epoch_leaves_no_thread(synth_ds):
    ds = StreamingImageDataset(synth_ds, "train", batch_size=8, read_ahead=4, decode=False)
    batches = iter(ds)
    next(batches)
    assert _read_threads() != []
    batches.close()
    assert _read_threads() == []
