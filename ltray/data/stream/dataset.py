"""The streaming reader training uses: whole collated batches in an exact, resumable order.

``StreamingImageDataset`` is a torch IterableDataset that yields batches itself, so that the
order of batches a rank sees is the pure function of :mod:`ltray.data.stream.order`. Each worker
reads only the row groups of its own rows, shard by shard through fsspec + pyarrow, one row
groups ahead of decoding (``read_ahead`` in flight, :mod:`ltray.data.stream.read_ahead`),
checks each shard's size against the manifest (and its sha256 when asked), decodes JPEG/PNG
with torchvision.io and applies the transform with a generator seeded from (seed, epoch, rank,
global batch index). It never loads a whole split into memory: a worker holds at most its
shuffle buffer plus ``read_ahead + 1`` row groups. With a ``cache``
(:mod:`ltray.data.shard_cache`) shards from an object store are read from node-local copies.

With a ``sampler`` other than ``plain`` (:mod:`ltray.data.stream.samplers`) the dataset reads
the ``label`` column of every shard once, when it is built, and each epoch emits rows as often
as the sampler draws them, through the same streaming order.
"""

from __future__ import annotations

import collections
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ltray import fs
from ltray.data.decode import decode_rgb
from ltray.data.manifest import Manifest, ShardInfo, read_manifest
from ltray.data.shard_cache import ShardCache
from ltray.data.stream import order, partition, samplers
from ltray.data.stream.read_ahead import read_ahead
from ltray.data.stream.transforms import BatchTransform
from ltray.errors import LtrayError
from ltray.fs import StorageOptions

COLUMNS = ["image", "label", "id"]
_OPEN_SHARDS = 4
# the labels of recently read splits, by (url, split, shards): shards are immutable, and a
# trainer builds its training dataset afresh each epoch
_LABELS: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
_LABELS_KEPT = 4


def undecodable(shard_path: str, row_id: str, reason: str) -> LtrayError:
    """The one error for an image no decoder takes, naming its shard and row."""
    return LtrayError(f"shard {shard_path}: row {row_id!r}: image does not decode ({reason})")


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """Seed of the augmentation generator of one batch (independent of workers and resumes)."""
    state = np.random.SeedSequence([seed, epoch, rank, batch]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def batch_generator(seed: int, epoch: int, rank: int, batch: int) -> torch.Generator:
    """The CPU generator a batch transform draws that batch's augmentation from, on every
    input path (:func:`batch_seed`)."""
    return torch.Generator().manual_seed(batch_seed(seed, epoch, rank, batch))


class ShardReader:
    """Reads row groups of one split's shards, checking each shard against the manifest once.

    Safe to call from several threads (read-ahead): each thread keeps its own open handles,
    as an fsspec file is a position plus a buffer. With a ``cache`` (:mod:`ltray.data.
    shard_cache`) shards are read from their verified node-local copies, and the store is
    asked only for shards missing there."""

    def __init__(
        self,
        root: str,
        shards: list[ShardInfo],
        storage_options: StorageOptions,
        verify_sha256: bool,
        cache: ShardCache | None = None,
    ) -> None:
        self.root = root
        self.shards = shards
        self.storage_options = dict(storage_options or {})
        self.verify_sha256 = verify_sha256
        self.cache = cache
        self._checked: set[int] = set()
        self._metadata: dict[int, pq.FileMetaData] = {}
        self._thread = threading.local()
        self._all_open: list[collections.OrderedDict[int, tuple[Any, pq.ParquetFile]]] = []
        self._lock = threading.Lock()
        self._first_open: dict[int, threading.Lock] = {}  # one per shard

    def url(self, shard: int) -> str:
        return fs.join_url(self.root, self.shards[shard].path)

    def check(self, shard: int) -> None:
        """Size (always) and sha256 (when asked) against the manifest, once per shard."""
        if shard in self._checked:
            return
        info = self.shards[shard]
        url = self.url(shard)
        try:
            size = fs.file_size(url, self.storage_options)
        except LtrayError:
            if not fs.exists(url, self.storage_options):
                raise info.missing_from(self.root) from None
            raise
        info.check_copy(size)
        if self.verify_sha256:
            info.check_copy(size, fs.sha256_of(url, self.storage_options))
        self._checked.add(shard)

    def _handles(self) -> collections.OrderedDict[int, tuple[Any, pq.ParquetFile]]:
        """This thread's open shards, most recently used last."""
        handles = getattr(self._thread, "open", None)
        if handles is None:
            handles = self._thread.open = collections.OrderedDict()
            with self._lock:
                self._all_open.append(handles)
        return handles

    def _open_shard(self, shard: int) -> Any:
        """A file object of the shard, checked against the manifest."""
        info = self.shards[shard]
        if self.cache is not None:  # the cache checks size and sha256 itself
            return self.cache.open(self.root, info, self.storage_options)
        self.check(shard)
        if fs.local_path(self.url(shard), self.storage_options) is not None:
            return fs.open_url(self.url(shard), "rb", self.storage_options)
        # one ranged request per read, none to open: each read-ahead thread opens its own
        return fs.RangeFile(self.url(shard), info.bytes, self.storage_options)

    def _open_parquet(self, shard: int, metadata: pq.FileMetaData | None) -> tuple:
        handle = self._open_shard(shard)
        try:
            return handle, pq.ParquetFile(handle, metadata=metadata)
        except (pa.ArrowException, OSError) as exc:
            handle.close()
            raise LtrayError(
                f"shard {self.shards[shard].path}: not readable Parquet ({exc})"
            ) from None

    def _parquet(self, shard: int) -> pq.ParquetFile:
        handles = self._handles()
        if shard in handles:
            handles.move_to_end(shard)
            return handles[shard][1]
        metadata = self._metadata.get(shard)
        if metadata is None:
            # one thread checks a new shard and reads its footer; the others reuse both
            with self._lock:
                first_open = self._first_open.setdefault(shard, threading.Lock())
            with first_open:
                metadata = self._metadata.get(shard)
                if metadata is None:
                    handles[shard] = self._open_parquet(shard, None)
                    self._metadata[shard] = handles[shard][1].metadata
        if shard not in handles:
            handles[shard] = self._open_parquet(shard, metadata)
        if len(handles) > _OPEN_SHARDS:
            old_handle, _ = handles.popitem(last=False)[1]
            old_handle.close()
        return handles[shard][1]

    def group_bytes(self, shard: int, group: int) -> int:
        """Expected bytes of one row group: its share of the shard's rows (the manifest keeps
        rows per row group, not bytes)."""
        info = self.shards[shard]
        return info.bytes * info.row_groups[group] // max(1, info.rows)

    def read_group(self, shard: int, group: int) -> tuple[list[bytes], list[int], list[str]]:
        """(images, labels, ids) of one row group."""
        info = self.shards[shard]
        parquet = self._parquet(shard)
        try:
            table = parquet.read_row_group(group, columns=COLUMNS)
        except (pa.ArrowException, OSError, IndexError) as exc:
            raise LtrayError(f"shard {info.path}: cannot read row group {group} ({exc})") from None
        if table.num_rows != info.row_groups[group]:
            raise LtrayError(
                f"shard {info.path}: row group {group} has {table.num_rows} rows, "
                f"the manifest says {info.row_groups[group]}"
            )
        return (
            table.column("image").to_pylist(),
            table.column("label").to_pylist(),
            table.column("id").to_pylist(),
        )

    def read_labels(self) -> np.ndarray:
        """The ``label`` column of every shard, in manifest order: the label of each global
        row index (one small column per shard, checked against the manifest's rows)."""
        parts = []
        for shard, info in enumerate(self.shards):
            parquet = self._parquet(shard)
            try:
                column = parquet.read(columns=["label"]).column("label")
            except (pa.ArrowException, OSError, KeyError) as exc:
                raise LtrayError(f"shard {info.path}: cannot read its labels ({exc})") from None
            if len(column) != info.rows:
                raise LtrayError(
                    f"shard {info.path}: {len(column)} rows, the manifest says {info.rows}"
                )
            parts.append(column.to_numpy(zero_copy_only=False).astype(np.int64))
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def close(self) -> None:
        """Close every thread's handles (once no read is running)."""
        with self._lock:
            for handles in self._all_open:
                for handle, _ in handles.values():
                    handle.close()
                handles.clear()


@dataclass(frozen=True)
class _UnitRead:
    """One row group to read, and which of its rows (local and global index) are wanted."""

    shard: int
    group: int
    local: np.ndarray
    rows: np.ndarray


def _split_labels(
    url: str,
    split: str,
    shards: list[ShardInfo],
    storage_options: StorageOptions,
    verify_sha256: bool,
    cache: ShardCache | None,
) -> np.ndarray:
    """The label of every row of a split (read-only), read once and kept for a few splits."""
    key = (url, split, tuple((s.path, s.bytes, s.sha256) for s in shards))
    if key in _LABELS:
        _LABELS.move_to_end(key)
        return _LABELS[key]
    reader = ShardReader(url, shards, storage_options, verify_sha256, cache)
    try:
        labels = reader.read_labels()
    finally:
        reader.close()
    labels.flags.writeable = False  # shared by every dataset of this split
    _LABELS[key] = labels
    if len(_LABELS) > _LABELS_KEPT:
        _LABELS.popitem(last=False)
    return labels


class _Held(dict):
    """Rows read and not yet emitted: row -> (image, label, id, shard). A sampler can emit a
    row more than once, so each is held until its last use in the worker's batches; with
    ``repeats`` False (plain order: every row once) a row is released at its use, without
    counting."""

    def __init__(self, wanted: np.ndarray, repeats: bool) -> None:
        super().__init__()
        self.remaining: dict[int, int] | None = None
        if repeats:
            rows, uses = np.unique(wanted, return_counts=True)
            self.remaining = dict(zip(rows.tolist(), uses.tolist(), strict=True))

    def take(self, row: int) -> tuple[bytes, int, str, int]:
        if self.remaining is None:
            return self.pop(row)
        self.remaining[row] -= 1
        return self.pop(row) if self.remaining[row] == 0 else self[row]


def _ready_after(batches: list[np.ndarray], reads: list[_UnitRead]) -> np.ndarray:
    """For each batch, the position in ``reads`` after which all its rows have arrived."""
    arrived = np.concatenate([r.rows for r in reads])
    when = np.concatenate([np.full(len(r.rows), k) for k, r in enumerate(reads)])
    by_row = np.argsort(arrived)
    sorted_rows = arrived[by_row]
    out = np.empty(len(batches), dtype=np.int64)
    for b, rows in enumerate(batches):
        out[b] = when[by_row[np.searchsorted(sorted_rows, rows)]].max()
    return out


def check_labels(labels: np.ndarray, num_classes: int, split: str) -> None:
    """One clear error naming the first row (global index) whose label is outside the
    manifest's classes: a loss would otherwise index out of range, or a sampler skew."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise LtrayError(
            f"split {split!r}: row {int(bad[0])} has label {int(labels[bad[0]])}, "
            f"outside the manifest's {num_classes} classes"
        )


def reading_options(data: Any) -> dict[str, Any]:
    """How a job's ``data`` section (:class:`ltray.config.DataConfig`) reads shards: the
    read-ahead bounds and the node-local cache, as :class:`StreamingImageDataset` takes them
    (training and ``ltray eval`` alike)."""
    cache = data.cache
    return {
        "read_ahead": data.read_ahead,
        "read_ahead_bytes": data.read_ahead_bytes,
        "cache": ShardCache(cache.folder, cache.max_bytes) if cache else None,
    }


class StreamingImageDataset(IterableDataset):
    """Batches of one split of a prepared data set, in the order of :mod:`ltray.data.stream.order`.

    Each item is a dict: ``image`` uint8 [B, 3, H, W] (H = W = the transform's size; without a
    transform all images of a batch must share a size), ``label`` int64 [B], ``index`` int64
    [B] (global row index in the split). With ``decode=False`` ``image`` is the list of encoded
    bytes instead, and ``batch`` (the canonical batch index, which seeds the augmentation) and
    ``where`` ((shard path, row id) of each image) come with it: for the GPU decode path
    (:mod:`ltray.train.input_path`) and benchmarks of the streaming path alone.

    The rank's batch count may differ from another rank's by one (row stretches differ by at
    most one row); ``drop_last=True`` gives every rank the same number of full batches, and
    ``equal_ranks=True`` (training) the same floor(N / W) rows (see :mod:`partition`).

    ``read_ahead`` row groups (and at most ``read_ahead_bytes`` of them, by the manifest's
    sizes) are read in threads while the current one decodes; 0 reads in the worker's own
    thread. ``cache`` keeps the shards of a remote data set on this node; for a local one it
    is pointless and is turned off, with one warning.
    """

    def __init__(
        self,
        url: str,
        split: str,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 8192,
        transform: BatchTransform | None = None,
        storage_options: StorageOptions = None,
        verify_sha256: bool = False,
        drop_last: bool = False,
        equal_ranks: bool = False,
        decode: bool = True,
        manifest: Manifest | None = None,
        sampler: str = "plain",
        read_ahead: int = 4,
        read_ahead_bytes: int = 256 << 20,
        cache: ShardCache | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise LtrayError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise LtrayError(f"rank {rank} is not in [0, world_size={world_size})")
        if shuffle_buffer < 1:
            raise LtrayError(f"shuffle_buffer must be at least 1, got {shuffle_buffer}")
        if read_ahead < 0 or read_ahead_bytes < 1:
            raise LtrayError(
                f"read_ahead must be >= 0 and read_ahead_bytes >= 1, got {read_ahead}, "
                f"{read_ahead_bytes}"
            )
        self.url = str(url)
        self.split = split
        self.storage_options = dict(storage_options or {})
        self.manifest = manifest or read_manifest(self.url, self.storage_options)
        self.shards = self.manifest.shards(split)
        for shard in self.shards:
            if sum(shard.row_groups) != shard.rows:
                raise LtrayError(f"manifest: shard {shard.path}: row groups do not sum to its rows")
        self.row_groups = [list(s.row_groups) for s in self.shards]
        self.num_rows = sum(s.rows for s in self.shards)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.transform = transform
        self.verify_sha256 = verify_sha256
        self.drop_last = drop_last
        self.equal_ranks = equal_ranks
        self.decode = decode
        self.read_ahead = read_ahead
        self.read_ahead_bytes = read_ahead_bytes
        if cache is not None and fs.local_path(self.url, self.storage_options) is not None:
            warnings.warn(
                f"data.cache is off: {self.url} is on a local file system already", stacklevel=2
            )
            cache = None
        if cache is not None:
            cache.check_fits(self.shards)
        self.cache = cache
        self.epoch = 0
        self.start_batch = 0
        samplers.SAMPLERS.get(sampler)  # an unknown name fails here, listing the valid ones
        self.sampler = sampler
        self.labels: np.ndarray | None = None
        if sampler != "plain":
            self.labels = self._read_labels()

    def _read_labels(self) -> np.ndarray:
        labels = _split_labels(
            self.url, self.split, self.shards, self.storage_options, self.verify_sha256, self.cache
        )
        check_labels(labels, self.manifest.num_classes, self.split)
        return labels

    def repeats(self) -> np.ndarray | None:
        """Each row's count this epoch under the sampler; None for ``plain`` (once each)."""
        if self.labels is None:
            return None
        return samplers.repeat_counts(
            self.sampler, self.labels, self.manifest.num_classes, self.seed, self.epoch
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; ``start_batch`` resumes it after that many batches of this rank."""
        if epoch < 0 or start_batch < 0:
            raise LtrayError(f"epoch and start_batch must be >= 0, got {epoch}, {start_batch}")
        self.epoch = epoch
        self.start_batch = start_batch

    def num_batches(self, num_workers: int = 0) -> int:
        """Batches this rank yields in a whole epoch (the same for any ``num_workers``)."""
        if num_workers < 0:
            raise LtrayError(f"num_workers must be >= 0, got {num_workers}")
        start, stop = partition.rank_rows(
            self.num_rows,
            self.rank,
            self.world_size,
            self.batch_size,
            self.drop_last,
            self.equal_ranks,
        )
        return partition.num_batches(stop - start, self.batch_size)

    def plan(self, num_workers: int, worker: int) -> order.WorkerPlan:
        """The batches physical ``worker`` of ``num_workers`` yields this epoch."""
        return order.plan_worker(
            self.row_groups,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=max(1, num_workers),
            worker=worker,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            shuffle_buffer=self.shuffle_buffer,
            drop_last=self.drop_last,
            equal_ranks=self.equal_ranks,
            start_batch=self.start_batch,
            repeats=self.repeats(),
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        num_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        plan = self.plan(num_workers, worker)
        reader = ShardReader(
            self.url, self.shards, self.storage_options, self.verify_sha256, self.cache
        )
        try:
            yield from self._batches(plan, reader)
        finally:
            reader.close()

    def _reads(self, plan: order.WorkerPlan, needed: np.ndarray) -> list[_UnitRead]:
        """The row groups holding needed rows, in the worker's read order, with those rows."""
        units = order.units_of(self.row_groups)
        rows = plan.rows[np.isin(plan.rows, needed)]
        unit_ids = np.searchsorted(units.offset, rows, side="right") - 1
        if len(rows) == 0:
            return []
        cuts = np.flatnonzero(np.diff(unit_ids)) + 1
        reads = []
        for unit_rows in np.split(rows, cuts):
            u = int(np.searchsorted(units.offset, unit_rows[0], side="right") - 1)
            local = unit_rows - units.offset[u]
            reads.append(_UnitRead(int(units.shard[u]), int(units.group[u]), local, unit_rows))
        return reads

    def _batches(self, plan: order.WorkerPlan, reader: ShardReader) -> Iterator[dict[str, Any]]:
        batches = plan.batches[plan.first :]
        batch_ids = plan.batch_ids[plan.first :]
        if not batches:
            return
        reads = self._reads(plan, np.concatenate(batches))
        ready_after = _ready_after(batches, reads)
        held = _Held(np.concatenate(batches), repeats=self.sampler != "plain")
        next_batch = 0
        groups = read_ahead(
            lambda read: reader.read_group(read.shard, read.group),
            reads,
            [reader.group_bytes(r.shard, r.group) for r in reads],
            self.read_ahead,
            self.read_ahead_bytes,
        )
        try:
            for k, (read, (images, labels, ids)) in enumerate(zip(reads, groups, strict=True)):
                for i, row in zip(read.local.tolist(), read.rows.tolist(), strict=True):
                    held[row] = (images[i], labels[i], ids[i], read.shard)
                while next_batch < len(batches) and ready_after[next_batch] <= k:
                    yield self._collate(batches[next_batch], batch_ids[next_batch], held)
                    next_batch += 1
        finally:
            groups.close()  # stops the reads in flight now, also when the consumer stopped early
        assert next_batch == len(batches), "a planned batch was never completed"

    def _collate(self, rows: np.ndarray, batch_id: int, held: _Held) -> dict[str, Any]:
        entries = [held.take(int(r)) for r in rows]
        labels = torch.tensor([e[1] for e in entries], dtype=torch.int64)
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64).copy())
        if not self.decode:  # for the GPU decode path: what it needs to seed and to blame
            return {
                "image": [e[0] for e in entries],
                "label": labels,
                "index": index,
                "batch": batch_id,
                "where": [(self.shards[e[3]].path, e[2]) for e in entries],
            }
        images = []
        for data, _, row_id, shard in entries:
            try:
                images.append(decode_rgb(data))
            except ValueError as exc:
                raise undecodable(self.shards[shard].path, row_id, str(exc)) from None
        if self.transform is not None:
            generator = batch_generator(self.seed, self.epoch, self.rank, batch_id)
            return {"image": self.transform(images, generator), "label": labels, "index": index}
        if len({tuple(im.shape) for im in images}) > 1:
            raise LtrayError(
                f"split {self.split!r}: images of different sizes in one batch "
                f"(e.g. row {entries[0][2]!r}); pass a transform that resizes"
            )
        return {"image": torch.stack(images), "label": labels, "index": index}


def _worker_message(exc: LtrayError) -> str:
    """The original one-line message of an LtrayError re-raised from a loader worker."""
    prefix = f"{LtrayError.__module__}.{LtrayError.__qualname__}: "
    for line in reversed(str(exc).splitlines()):
        if line.startswith(prefix):
            return line[len(prefix) :]
    return str(exc).strip().splitlines()[0] if str(exc).strip() else "data loader failed"


class _Loader(DataLoader):
    """A DataLoader whose iterator starts its workers as it is made (so that a trainer can
    start the next epoch's while this one's last batches train) and whose worker errors come
    back as the worker's one-line LtrayError."""

    def __iter__(self) -> _WorkerBatches:  # noqa: D105
        return _WorkerBatches(super().__iter__())


class _WorkerBatches:
    """A loader's batches; ``close()``, the end of the batches and an error each stop the
    workers then, not whenever the iterator is collected: a late collection can stall for
    seconds joining them."""

    def __init__(self, iterator: Iterator[dict[str, Any]]) -> None:
        self._iterator = iterator

    def __iter__(self) -> _WorkerBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return next(self._iterator)
        except LtrayError as exc:
            self.close()
            raise LtrayError(_worker_message(exc)) from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutdown = getattr(self._iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """The dataset collates its own batches; DataLoader's default would walk every element."""
    return batch


def make_loader(
    dataset: StreamingImageDataset,
    num_workers: int = 2,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
    multiprocessing_context: Any = None,
) -> DataLoader:
    """A DataLoader(batch_size=None) over the dataset's own batches.

    Workers are not persistent: each epoch's iterator forks them afresh, as it is made, with
    the dataset's epoch and start batch of that moment (set_epoch before iterating). Resuming
    needs the same num_workers. The loader draws its workers' base seed from a generator of
    its own, never from torch's global one: the dataset seeds its own randomness, and a loader
    made on resume must not shift the global generator that model-side randomness (dropout)
    uses.
    """
    if num_workers < 0:
        raise LtrayError(f"num_workers must be >= 0, got {num_workers}")
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {
            "prefetch_factor": prefetch_factor,
            "multiprocessing_context": multiprocessing_context,
        }
    return _Loader(
        dataset,
        batch_size=None,
        collate_fn=_as_is,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
        **extra,
    )
