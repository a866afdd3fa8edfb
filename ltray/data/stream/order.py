"""The per-epoch order of a split's rows, and of the batches a rank yields: pure functions.

Given the layout (rows of every row group of every shard, in manifest order), the batches a
rank sees are a function of (layout, seed, epoch, rank, world_size, num_workers, batch_size,
shuffle_buffer) alone:

1. Units are row groups. With ``shuffle`` their order is ``default_rng([seed, epoch])
   .permutation``; concatenating them gives the epoch's row stream (locality kept: a unit is
   read as one piece).
2. :mod:`ltray.data.stream.partition` gives each rank a contiguous stretch of the stream and each of
   its K workers a contiguous run of whole batches of that stretch.
3. A worker passes its rows through a bounded shuffle buffer of
   ``max(1, shuffle_buffer // K)`` rows seeded by ``[seed, epoch, rank, worker]`` and cuts
   the output into batches.
4. torch's DataLoader takes one batch from each worker in turn (0, 1, ..., K-1, 0, ...),
   skipping workers that ran out: that interleaving is the rank's canonical batch order,
   and a batch's position in it is its global batch index (it seeds the augmentation).

With a sampler (:mod:`ltray.data.stream.samplers`), step 1 emits row i ``repeats[i]`` times in
a row where the plain stream emits it once; the stream keeps its length N (the repeats sum to
N), so steps 2-4 and the resume below are unchanged. Without one (``repeats=None``) the
order is the plain one, bit for bit.

Resuming at canonical batch b: the batch at b belongs to worker l0 in round j0. Physical
worker p then plays logical worker (l0 + p) mod K, skipping the batches that logical worker
emitted before b; DataLoader's round robin over the rotated workers replays b, b+1, ...
exactly (see :func:`resume_plan`). A resume needs the same num_workers as the epoch began with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ltray.data.stream import partition


@dataclass(frozen=True)
class Units:
    """Row groups of a split, flattened: unit u is rows [start, start+rows) of shard ``shard``
    (row-group ``group`` of it), and global rows [offset, offset+rows) of the split."""

    shard: np.ndarray
    group: np.ndarray
    start: np.ndarray
    rows: np.ndarray
    offset: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.rows.sum())

    def __len__(self) -> int:
        return len(self.rows)


def units_of(row_groups: Sequence[Sequence[int]]) -> Units:
    """Units from the rows per row group of each shard (ShardInfo.row_groups, in order)."""
    shard, group, start, rows = [], [], [], []
    for s, groups in enumerate(row_groups):
        at = 0
        for g, n in enumerate(groups):
            shard.append(s)
            group.append(g)
            start.append(at)
            rows.append(n)
            at += n
    rows_a = np.asarray(rows, dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(rows_a)[:-1]]).astype(np.int64)
    as_int = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return Units(as_int(shard), as_int(group), as_int(start), rows_a, offset[: len(rows_a)])


def unit_order(num_units: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's order of units: a seeded permutation, or file order without shuffle."""
    if not shuffle:
        return np.arange(num_units, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_units).astype(np.int64)


def stream_slice(units: Units, order: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Global row indices at positions [start, stop) of the stream ``order`` defines."""
    if stop <= start:
        return np.empty(0, dtype=np.int64)
    lengths = units.rows[order]
    ends = np.cumsum(lengths)
    first = int(np.searchsorted(ends, start, side="right"))
    last = int(np.searchsorted(ends, stop - 1, side="right"))
    pieces = [
        np.arange(units.offset[u], units.offset[u] + units.rows[u]) for u in order[first : last + 1]
    ]
    begin = int(ends[first] - lengths[first])
    return np.concatenate(pieces)[start - begin : stop - begin]


def repeated_stream_slice(
    units: Units, order: np.ndarray, repeats: np.ndarray, start: int, stop: int
) -> np.ndarray:
    """Like :func:`stream_slice` where row i stands ``repeats[i]`` times in a row."""
    if stop <= start:
        return np.empty(0, dtype=np.int64)
    rows = np.concatenate(
        [np.arange(units.offset[u], units.offset[u] + units.rows[u]) for u in order]
    )
    return np.repeat(rows, repeats[rows])[start:stop]


def buffered_shuffle(n: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """Output positions of a bounded shuffle buffer over an input of n items.

    The buffer fills with the first ``buffer_size`` items; then each arriving item replaces a
    uniformly chosen buffered one, which is emitted; the rest drain in random order. Output
    position i is always an input position below i + buffer_size, so a reader never holds
    more than ``buffer_size`` rows (plus the unit it is reading) to replay it.
    """
    size = min(max(1, buffer_size), n)
    if n <= 1 or size <= 1:
        return np.arange(n, dtype=np.int64)
    picks = rng.integers(0, size, size=n - size).tolist()
    buf = list(range(size))
    out = []
    for i, j in enumerate(picks, start=size):
        out.append(buf[j])
        buf[j] = i
    tail = np.asarray(buf, dtype=np.int64)[rng.permutation(size)]
    return np.concatenate([np.asarray(out, dtype=np.int64), tail])


def interleave(counts: Sequence[int]) -> list[tuple[int, int]]:
    """DataLoader's order of (worker, local batch) for workers yielding ``counts`` batches."""
    out = []
    for j in range(max(counts, default=0)):
        out.extend((w, j) for w, n in enumerate(counts) if n > j)
    return out


def canonical_index(counts: Sequence[int], worker: int, j: int) -> int:
    """Position of worker's j-th batch in :func:`interleave` (without building it)."""
    before = sum(min(n, j) for n in counts)
    return before + sum(1 for w in range(worker) if counts[w] > j)


@dataclass(frozen=True)
class ResumePlan:
    """After ``start_batch`` canonical batches: physical worker p plays ``logical[p]`` and
    skips its first ``skip[p]`` batches."""

    logical: list[int]
    skip: list[int]


def resume_plan(counts: Sequence[int], start_batch: int) -> ResumePlan:
    """Map physical workers to logical ones so that DataLoader replays batches b, b+1, ..."""
    k = len(counts)
    order = interleave(counts)
    if start_batch <= 0:
        return ResumePlan(list(range(k)), [0] * k)
    if start_batch >= len(order):
        return ResumePlan(list(range(k)), list(counts))
    l0, j0 = order[start_batch]
    logical = [(l0 + p) % k for p in range(k)]
    skip = [min(counts[w], j0 + 1 if w < l0 else j0) for w in logical]
    return ResumePlan(logical, skip)


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker yields this epoch: ``batches[i]`` holds global row indices of its i-th
    batch, ``batch_ids[i]`` that batch's canonical index in the rank's epoch; ``first`` is the
    first local batch to yield (earlier ones were consumed before a resume)."""

    logical: int
    rows: np.ndarray  # the worker's stream rows, in read order
    batches: list[np.ndarray]
    batch_ids: list[int]
    first: int


def plan_worker(
    row_groups: Sequence[Sequence[int]],
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    num_workers: int,
    worker: int,
    batch_size: int,
    shuffle: bool = True,
    shuffle_buffer: int = 8192,
    drop_last: bool = False,
    equal_ranks: bool = False,
    start_batch: int = 0,
    repeats: np.ndarray | None = None,
) -> WorkerPlan:
    """The batches physical ``worker`` yields (see the module docstring); ``repeats``: each
    row's count this epoch from a sampler (summing to the split's rows), None: once each."""
    units = units_of(row_groups)
    if repeats is not None:
        repeats = np.asarray(repeats, dtype=np.int64)
        assert len(repeats) == units.num_rows and repeats.sum() == units.num_rows, (
            "repeat counts must cover every row and sum to the split's rows"
        )
    rank_start, rank_stop = partition.rank_rows(
        units.num_rows, rank, world_size, batch_size, drop_last, equal_ranks
    )
    n_rank = rank_stop - rank_start
    spans = partition.worker_batches(partition.num_batches(n_rank, batch_size), num_workers)
    counts = [b - a for a, b in spans]
    resume = resume_plan(counts, start_batch)
    logical = resume.logical[worker]
    w_start, w_stop = partition.worker_rows(n_rank, batch_size, num_workers, logical)
    order = unit_order(len(units), seed, epoch, shuffle)
    if repeats is None:
        rows = stream_slice(units, order, rank_start + w_start, rank_start + w_stop)
    else:
        rows = repeated_stream_slice(
            units, order, repeats, rank_start + w_start, rank_start + w_stop
        )
    emitted = rows
    if shuffle:
        rng = np.random.default_rng([seed, epoch, rank, logical])
        emitted = rows[buffered_shuffle(len(rows), max(1, shuffle_buffer // num_workers), rng)]
    batches = [emitted[i : i + batch_size] for i in range(0, len(emitted), batch_size)]
    ids = [canonical_index(counts, logical, j) for j in range(len(batches))]
    return WorkerPlan(logical, rows, batches, ids, resume.skip[worker])


def round_robin(plans: Sequence[WorkerPlan]) -> list[tuple[int, np.ndarray]]:
    """(canonical batch index, rows) of every batch the workers' ``plans`` yield, in the order
    a DataLoader over them delivers: one batch from each worker in turn, skipping finished
    ones. Worker p's plan is physical worker p's (after a resume, a rotated logical one)."""
    streams = [list(zip(p.batch_ids[p.first :], p.batches[p.first :], strict=True)) for p in plans]
    out: list[tuple[int, np.ndarray]] = []
    j = 0
    while any(j < len(s) for s in streams):
        out.extend(s[j] for s in streams if j < len(s))
        j += 1
    return out


def epoch_batches(
    row_groups: Sequence[Sequence[int]],
    *,
    num_workers: int,
    start_batch: int = 0,
    **kwargs,
) -> list[np.ndarray]:
    """The rank's batches in canonical order from ``start_batch`` on (for tests and tools)."""
    plans = [
        plan_worker(
            row_groups, num_workers=num_workers, worker=w, start_batch=start_batch, **kwargs
        )
        for w in range(num_workers)
    ]
    return [rows for _, rows in round_robin(plans)]
