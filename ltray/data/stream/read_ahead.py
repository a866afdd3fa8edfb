"""Read row groups ahead of decoding, in order, with bounded concurrency and memory.

Against an object store each row-group read waits a request's latency; reading the next few
in threads while the caller decodes the current one hides it. The results come back in the
order of ``units`` whatever order the reads finish in, so the epoch order, exactly-once and
resume guarantees of :mod:`ltray.data.stream.order` do not depend on it.

Bounds: at most ``depth`` row groups read or being read beside the one the caller holds, and
no read is started that would take those past ``max_bytes`` (the next one always may, so a
row group larger than the budget still passes). ``depth`` 0 reads in the caller's thread.
Closing the generator early (a ``break`` in the training loop, an error) cancels the reads not
yet started and waits for the running ones, so no thread outlives it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Unit = TypeVar("Unit")
Result = TypeVar("Result")


def read_ahead(
    read: Callable[[Unit], Result],
    units: Sequence[Unit],
    sizes: Sequence[int],
    depth: int,
    max_bytes: int,
) -> Iterator[Result]:
    """``read(u)`` for each unit in order; ``sizes[i]``: the bytes unit i is expected to take."""
    if depth <= 0:
        for unit in units:
            yield read(unit)
        return
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="ltray-read")
    pending: collections.deque[tuple[Future, int]] = collections.deque()
    in_flight = 0
    next_unit = 0
    try:
        while next_unit < len(units) or pending:
            while next_unit < len(units) and len(pending) <= depth:
                size = sizes[next_unit]
                if pending and in_flight + size > max_bytes:
                    break
                pending.append((pool.submit(read, units[next_unit]), size))
                in_flight += size
                next_unit += 1
            future, size = pending.popleft()
            in_flight -= size
            yield future.result()
    finally:
        for future, _ in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
