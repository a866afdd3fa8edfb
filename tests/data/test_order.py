import itertools

import numpy as np
import pytest

from ltray.data.stream import order

LAYOUT = [[7, 5], [9], [3, 3, 3], [1]]  # 31 rows in 7 units over 4 shards
N = 31


def test_units_of_layout():
    units = order.units_of(LAYOUT)
    assert units.num_rows == N and len(units) == 7
    assert units.shard.tolist() == [0, 0, 1, 2, 2, 2, 3]
    assert units.group.tolist() == [0, 1, 0, 0, 1, 2, 0]
    assert units.start.tolist() == [0, 7, 0, 0, 3, 6, 0]
    assert units.offset.tolist() == [0, 7, 12, 21, 24, 27, 30]


def test_unit_order_is_seeded_and_plain_without_shuffle():
    assert order.unit_order(5, 0, 0, shuffle=False).tolist() == [0, 1, 2, 3, 4]
    a = order.unit_order(50, 1, 2, shuffle=True)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, order.unit_order(50, 1, 2, shuffle=True))
    assert not np.array_equal(a, order.unit_order(50, 1, 3, shuffle=True))


def test_stream_slice_follows_the_unit_order():
    units = order.units_of(LAYOUT)
    perm = np.array([6, 2, 0, 1, 3, 4, 5])
    full = order.stream_slice(units, perm, 0, N)
    assert full.tolist() == [30, *range(12, 21), *range(0, 12), *range(21, 30)]
    for a, b in [(0, 1), (3, 17), (10, 31), (5, 5)]:
        assert order.stream_slice(units, perm, a, b).tolist() == full[a:b].tolist()


@pytest.mark.parametrize(
    ("n", "buffer"), [(0, 4), (1, 4), (10, 1), (10, 4), (100, 200), (1000, 16)]
)
def test_buffered_shuffle_is_a_bounded_permutation(n, buffer):
    out = order.buffered_shuffle(n, buffer, np.random.default_rng(0))
    assert sorted(out.tolist()) == list(range(n))
    # output position i never needs an input beyond i + buffer: bounded memory when streaming
    assert all(src < i + max(buffer, 1) for i, src in enumerate(out.tolist()))
    if n >= 10 and buffer > 1:
        assert out.tolist() != list(range(n))


def test_interleave_is_round_robin_skipping_finished_workers():
    assert order.interleave([2, 3, 1]) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (1, 2)]
    counts = [2, 3, 1, 0]
    for pos, (w, j) in enumerate(order.interleave(counts)):
        assert order.canonical_index(counts, w, j) == pos


def _dataloader_order(streams):
    """What torch's DataLoader yields from per-worker batch streams: round robin, skipping
    workers that ran out (as _MultiProcessingDataLoaderIter does)."""
    out, j = [], 0
    while any(j < len(s) for s in streams):
        out.extend(s[j] for s in streams if j < len(s))
        j += 1
    return out


@pytest.mark.parametrize("counts", [[3, 3], [2, 3, 3], [0, 1, 2], [5], [1, 1, 1, 2], [0, 0, 4]])
def test_resume_plan_replays_the_canonical_tail(counts):
    canonical = order.interleave(counts)
    for b in range(len(canonical) + 1):
        plan = order.resume_plan(counts, b)
        streams = [
            [(w, j) for j in range(plan.skip[p], counts[w])] for p, w in enumerate(plan.logical)
        ]
        assert _dataloader_order(streams) == canonical[b:], b


def _kw(**over):
    kw = dict(seed=5, epoch=0, rank=0, world_size=1, batch_size=4, shuffle=True, shuffle_buffer=6)
    kw.update(over)
    return kw


@pytest.mark.parametrize(
    ("world", "workers", "batch", "drop_last"),
    list(itertools.product([1, 2, 3], [1, 2, 3], [1, 4, 7], [False, True])),
)
def test_every_row_once_per_epoch_and_resume_anywhere(world, workers, batch, drop_last):
    seen = []
    for rank in range(world):
        kw = _kw(rank=rank, world_size=world, batch_size=batch, drop_last=drop_last)
        full = order.epoch_batches(LAYOUT, num_workers=workers, **kw)
        assert all(len(b) == batch for b in full[:-1])
        if drop_last:
            assert all(len(b) == batch for b in full)
        for start in range(len(full) + 1):
            tail = order.epoch_batches(LAYOUT, num_workers=workers, start_batch=start, **kw)
            assert [t.tolist() for t in tail] == [f.tolist() for f in full[start:]]
        seen += [r for b in full for r in b.tolist()]
    assert len(seen) == len(set(seen))
    if not drop_last:
        assert sorted(seen) == list(range(N))
    else:
        assert len(seen) == world * ((N // world) // batch * batch)


def test_rank_batch_counts_differ_by_at_most_one():
    counts = [
        len(order.epoch_batches([[101]], num_workers=2, **_kw(rank=r, world_size=4, batch_size=5)))
        for r in range(4)
    ]
    assert max(counts) - min(counts) <= 1


def test_epochs_differ_and_seeds_repeat():
    def rows(**over):
        return [b.tolist() for b in order.epoch_batches(LAYOUT, num_workers=2, **_kw(**over))]

    assert rows(epoch=0) == rows(epoch=0)
    assert rows(epoch=0) != rows(epoch=1)
    assert rows(seed=1) != rows(seed=2)


def test_no_shuffle_reads_in_file_order():
    flat = order.epoch_batches(LAYOUT, num_workers=1, **_kw(shuffle=False, batch_size=31))
    assert flat[0].tolist() == list(range(N))


def test_batch_ids_are_canonical_positions():
    plans = [order.plan_worker(LAYOUT, num_workers=3, worker=w, **_kw()) for w in range(3)]
    ids = sorted(i for p in plans for i in p.batch_ids)
    assert ids == list(range(len(ids)))


@pytest.mark.parametrize(
    ("n", "world", "batch"),
    [  # n >= world: with fewer rows than ranks the trainer refuses the run
        (n, w, b)
        for n, w, b in itertools.product([1, 2, 7, 31, 64, 101], [1, 2, 3, 4, 8], [1, 3, 8, 50])
        if n >= w
    ],
)
def test_equal_ranks_take_the_same_steps_on_the_same_batch_sizes(n, world, batch):
    """Training's partition: every rank the same floor(N / W) rows, so the same batch count
    and batch sizes (one lr per step, no Join); at most W - 1 rows left out, never one twice."""
    layout = [[n // 2, n - n // 2]] if n > 1 else [[1]]
    seen: list[int] = []
    shapes = []
    for rank in range(world):
        for workers in (1, 2, 3):
            kw = _kw(rank=rank, world_size=world, batch_size=batch, shuffle_buffer=5)
            full = order.epoch_batches(layout, num_workers=workers, equal_ranks=True, **kw)
            shapes.append([len(b) for b in full])
            for start in (0, len(full) // 2, len(full)):
                tail = order.epoch_batches(
                    layout, num_workers=workers, equal_ranks=True, start_batch=start, **kw
                )
                assert [t.tolist() for t in tail] == [f.tolist() for f in full[start:]]
        seen += [r for b in full for r in b.tolist()]
    assert all(s == shapes[0] for s in shapes)
    assert sum(shapes[0]) == n // world and len(shapes[0]) == -(-(n // world) // batch)
    assert len(seen) == len(set(seen)) == world * (n // world) and n - len(seen) < world


def test_equal_ranks_leave_out_other_rows_each_epoch():
    def left_out(epoch):
        kw = _kw(world_size=4, batch_size=4, epoch=epoch)
        rows = {
            r
            for rank in range(4)
            for b in order.epoch_batches(
                [[1] * 31], num_workers=2, equal_ranks=True, **{**kw, "rank": rank}
            )
            for r in b.tolist()
        }
        return set(range(31)) - rows

    dropped = [left_out(epoch) for epoch in range(6)]
    assert all(len(d) == 3 for d in dropped)
    assert len({frozenset(d) for d in dropped}) > 1
