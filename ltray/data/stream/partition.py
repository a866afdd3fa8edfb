"""Which rows a rank and a data-loader worker read: pure functions of sizes and counts.

Per epoch the split is one permuted stream of rows (see :mod:`ltray.data.stream.order`). Rank r of W
takes the contiguous stretch ``[floor(r N / W), floor((r+1) N / W))`` of it, so every row is
read exactly once across ranks and stretches differ by at most one row; ranks may therefore
yield one batch more or less than each other (``drop_last`` evens them out by dropping each
rank's rows beyond ``floor(floor(N / W) / B) * B``).

Training uses ``equal_ranks``: rank r takes ``[r q, (r+1) q)`` with q = floor(N / W), so every
rank has the same rows, the same batch count ceil(q / B) and the same last-batch size, takes the
same optimiser steps at the same learning rates, and DDP needs no ``Join``. At most W - 1 rows
(the stream's tail) are left out of an epoch, and since the stream is reshuffled every epoch
they are other rows each epoch (as ``DistributedSampler(drop_last=True)`` does). Evaluation
keeps the every-row-once stretches above. A split with fewer rows than ranks gives q = 0: a
rank with no training batch, which the trainer refuses before training.

A rank's stretch is cut into its
ceil(n / B) batches, and worker k of K takes the contiguous run of batches
``[floor(k nb / K), floor((k+1) nb / K))``: workers read disjoint rows, and only the rank's
last batch can be short.
"""

from __future__ import annotations


def even_bounds(n: int, parts: int, i: int) -> tuple[int, int]:
    """The i-th of ``parts`` contiguous pieces of range(n); sizes differ by at most one."""
    if parts < 1 or not 0 <= i < parts:
        raise ValueError(f"piece {i} of {parts} does not exist")
    return (i * n) // parts, ((i + 1) * n) // parts


def rank_rows(
    num_rows: int,
    rank: int,
    world_size: int,
    batch_size: int,
    drop_last: bool,
    equal_ranks: bool = False,
) -> tuple[int, int]:
    """[start, stop) of the epoch's row stream that ``rank`` reads."""
    if equal_ranks:
        share = num_rows // world_size
        start, stop = rank * share, (rank + 1) * share
    else:
        start, stop = even_bounds(num_rows, world_size, rank)
    if drop_last:
        stop = start + (num_rows // world_size) // batch_size * batch_size
    return start, stop


def num_batches(rows: int, batch_size: int) -> int:
    """Batches that ``rows`` rows make (the last one may be short)."""
    return -(-rows // batch_size)


def worker_batches(total_batches: int, num_workers: int) -> list[tuple[int, int]]:
    """[first, last) rank batch of each worker, in stream order (a contiguous run each)."""
    return [even_bounds(total_batches, num_workers, k) for k in range(num_workers)]


def worker_rows(rows: int, batch_size: int, num_workers: int, worker: int) -> tuple[int, int]:
    """[start, stop) of a rank's ``rows`` stream rows that ``worker`` reads."""
    first, last = worker_batches(num_batches(rows, batch_size), num_workers)[worker]
    return first * batch_size, min(last * batch_size, rows)
