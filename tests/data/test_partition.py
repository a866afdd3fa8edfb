import pytest

from ltray.data.stream import partition


@pytest.mark.parametrize("n", [0, 1, 7, 10, 101])
@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_even_bounds_tile_the_range(n, parts):
    pieces = [partition.even_bounds(n, parts, i) for i in range(parts)]
    assert pieces[0][0] == 0 and pieces[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
    sizes = [b - a for a, b in pieces]
    assert max(sizes) - min(sizes) <= 1


def test_even_bounds_rejects_missing_piece():
    with pytest.raises(ValueError):
        partition.even_bounds(10, 2, 2)


def test_rank_rows_cover_every_row_once_and_differ_by_one():
    spans = [partition.rank_rows(103, r, 4, 8, drop_last=False) for r in range(4)]
    assert spans == [(0, 25), (25, 51), (51, 77), (77, 103)]


def test_rank_rows_drop_last_gives_equal_full_batches():
    spans = [partition.rank_rows(103, r, 4, 8, drop_last=True) for r in range(4)]
    assert [b - a for a, b in spans] == [24, 24, 24, 24]
    assert all(a == partition.even_bounds(103, 4, r)[0] for r, (a, _) in enumerate(spans))


def test_worker_rows_are_whole_batches_and_only_the_last_is_short():
    rows, batch, workers = 53, 8, 3  # 7 batches: 2, 2, 3
    spans = [partition.worker_rows(rows, batch, workers, w) for w in range(workers)]
    assert spans == [(0, 16), (16, 32), (32, 53)]
    assert partition.worker_batches(7, 3) == [(0, 2), (2, 4), (4, 7)]


def test_more_workers_than_batches():
    spans = [partition.worker_rows(5, 4, 4, w) for w in range(4)]
    assert spans == [(0, 0), (0, 4), (4, 4), (4, 5)]
    assert partition.num_batches(5, 4) == 2 and partition.num_batches(0, 4) == 0
