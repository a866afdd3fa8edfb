"""Where a rank's batches come from, and how they reach the device.

Three paths, one order. Every path yields, for (epoch, start batch), the same rows in the same
batches (:mod:`ltray.data.stream.order`) and augments each batch with the same batch transform
seeded the same way (:mod:`ltray.data.stream.transforms`, ``batch_seed``), so which path a
worker takes changes its speed, not its numbers (bit for bit for ``cifar``; for ``imagenet``
up to the float rounding of a resize on another device):

- ``cpu``: loader processes read, decode and augment; the step copies the uint8 batch over.
  The path of CPU workers, and of GPU workers with ``data.decode: cpu``.
- ``gpu``: loader processes read only the encoded bytes; a thread of the training process
  decodes them on the GPU (nvjpeg, :mod:`ltray.data.gpu_decode`; what it refuses on the CPU,
  counted) and augments them there, on a CUDA stream of its own, ``PREFETCH`` batches ahead
  of the step, so reading and decoding overlap the step.
- ``device``: a split that fits comfortably on the device is decoded once into one uint8
  tensor there (:mod:`ltray.data.stream.device_set`) and each epoch's batches are gathered and
  augmented on the device, with no loader process at all.

On the two streaming paths each epoch starts its loader processes afresh (their epoch is fixed
when they start); a trainer asks ``epoch(e, then=e + 1)``, and epoch e + 1's processes start
while epoch e's last batches are consumed, so that the next epoch's first reads and decodes
overlap this epoch's last steps instead of stalling the step between epochs.

``data.loader_workers: auto`` takes the CPUs this process may run on, shares them with the
other training processes of its node, and keeps one for the training process itself.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ltray.config import DataConfig
from ltray.data.gpu_decode import UndecodableImage, decode_batch, to_device
from ltray.data.manifest import Manifest
from ltray.data.stream import StreamingImageDataset, make_loader, reading_options
from ltray.data.stream.dataset import batch_generator, undecodable
from ltray.data.stream.device_set import DeviceImageSet, NotHeldOnDevice, fits, nbytes_needed
from ltray.data.stream.transforms import build_batch_transform
from ltray.errors import LtrayError

PATHS = ("cpu", "gpu", "device")
PREFETCH = 2  # batches the GPU decode thread works ahead of the step
# the next epoch's loader starts this many batches a worker before this epoch's end: as many
# as a loader keeps in flight (make_loader's prefetch_factor), so that this epoch's workers
# have about done their part when the next epoch's start
NEXT_EPOCH_LEAD = 2
MAX_AUTO_WORKERS = 8


def auto_loader_workers(local_world_size: int, cpus: int | None = None) -> int:
    """Loader processes per training process for ``loader_workers: auto``: the CPUs this
    process may use (its affinity, which containers and ``taskset`` narrow) shared among the
    node's training processes, less one for the training process itself; at most 8."""
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    share = cpus // max(1, local_world_size)
    return max(0, min(MAX_AUTO_WORKERS, share - 1))


def loader_workers(data: DataConfig, local_world_size: int) -> int:
    """``data.loader_workers`` as a number."""
    if data.loader_workers == "auto":
        return auto_loader_workers(local_world_size)
    return int(data.loader_workers)


class SplitInput:
    """One split's batches for one rank, by one of :data:`PATHS`.

    ``epoch(e, start_batch)`` yields dicts with ``image`` (uint8 [B, 3, S, S]; on the device
    except on the ``cpu`` path) and ``label`` (int64 [B]), from canonical batch ``start_batch``
    on. ``fallback`` counts, by reason, the images of the batches yielded so far that the
    ``gpu`` path decoded on the CPU. ``opened`` lists the (epoch, start batch) of each loader
    started, in order.
    """

    def __init__(
        self,
        path: str,
        dataset: StreamingImageDataset,
        workers: int,
        device: torch.device,
        held: DeviceImageSet | None = None,
    ) -> None:
        self.path = path
        self.dataset = dataset
        self.workers = workers
        self.device = device
        self.held = held
        self.fallback: collections.Counter[str] = collections.Counter()
        self.opened: list[tuple[int, int]] = []
        # the next epoch's loader, started ahead: ((epoch, start batch), batches, its workers)
        self._ahead: tuple[tuple[int, int], Iterator[dict[str, Any]], Any] | None = None

    def num_batches(self) -> int:
        return self.dataset.num_batches(self.workers)

    def epoch(
        self, epoch: int, start_batch: int = 0, *, then: int | None = None, steps: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Epoch ``epoch``'s batches from ``start_batch`` on. With ``then``, the epoch that
        follows (from its first batch), that epoch's loader processes start while this
        epoch's last :data:`NEXT_EPOCH_LEAD` batches a worker are consumed, so that reading
        and decoding its first batches overlap them; ``steps`` is where this epoch will stop,
        if before its end. The next ``epoch()`` takes that loader if it asks for that epoch,
        else stops it."""
        if self.held is not None:
            return self.held.batches(epoch, start_batch)
        batches = self._take_or_open(epoch, start_batch)
        if then is None or self.workers == 0:  # no worker processes to start ahead
            return batches
        end = self.num_batches() if steps is None else min(steps, self.num_batches())
        return self._starting_next(batches, start_batch, end - self.workers * NEXT_EPOCH_LEAD, then)

    def close(self) -> None:
        """Stop the loader started ahead for an epoch that is not coming (a resume elsewhere,
        a run that ended or failed before it): its processes would otherwise live until the
        process exits."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[2].close()

    def _take_or_open(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        if self._ahead is not None and self._ahead[0] == (epoch, start_batch):
            batches, self._ahead = self._ahead[1], None
            return batches
        self.close()
        return self._open(epoch, start_batch)[0]

    def _open(self, epoch: int, start_batch: int) -> tuple[Iterator[dict[str, Any]], Any]:
        """(batches, the loader's iterator): its workers start now, with this epoch."""
        self.dataset.set_epoch(epoch, start_batch)
        cuda = self.device.type == "cuda"
        loader = iter(make_loader(self.dataset, num_workers=self.workers, pin_memory=cuda))
        self.opened.append((epoch, start_batch))
        if self.path == "cpu":
            return loader, loader
        decode = functools.partial(self._decode_on_device, epoch=epoch)
        return self._counted(_prefetched(loader, decode, self.device)), loader

    def _starting_next(
        self, batches: Iterator[dict[str, Any]], first: int, start_at: int, then: int
    ) -> Iterator[dict[str, Any]]:
        """``batches`` (numbered from ``first``), starting epoch ``then``'s loader as batch
        ``start_at`` is handed over."""
        with contextlib.closing(batches):
            for index, batch in enumerate(batches, start=first):
                if index >= start_at and self._ahead is None:
                    self._ahead = ((then, 0), *self._open(then, 0))
                yield batch

    def _counted(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Batches as they reach the step, their CPU fallbacks counted then (the thread
        decodes batches ahead that an early stop never uses)."""
        with contextlib.closing(batches):
            for batch in batches:
                self.fallback.update(batch.pop("fallback"))
                yield batch

    def _decode_on_device(self, batch: dict[str, Any], epoch: int) -> dict[str, Any]:
        """Encoded bytes of epoch ``epoch`` -> the augmented uint8 batch on the device (the
        ``gpu`` path)."""
        try:
            decoded = decode_batch(batch["image"], self.device)
        except UndecodableImage as exc:
            shard, row = batch["where"][exc.position]
            raise undecodable(shard, row, exc.reason) from None
        dataset = self.dataset
        generator = batch_generator(dataset.seed, epoch, dataset.rank, batch["batch"])
        return {
            "image": dataset.transform(decoded.images, generator),
            "label": to_device(batch["label"], self.device),
            "index": batch["index"],
            "fallback": decoded.fallback,
        }


_END = object()


def _prefetched(
    source: Iterator[dict[str, Any]],
    work: Callable[[dict[str, Any]], dict[str, Any]],
    device: torch.device,
    depth: int = PREFETCH,
) -> Iterator[dict[str, Any]]:
    """``work(batch)`` for each batch of ``source`` in a thread, ``depth`` batches ahead of the
    consumer; on CUDA on a stream of its own, the consumer's stream waiting on an event per
    batch (no host synchronisation). An error in the thread is raised in the consumer; a
    consumer that stops early stops the thread and closes ``source`` (its loader processes)."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def run() -> None:
        try:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for batch in source:
                    if stop.is_set():
                        break
                    out = work(batch)
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    put((out, event))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((exc, None))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            put((_END, None))

    thread = threading.Thread(target=run, name="ltray-gpu-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, event = results.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for value in item.values():
                    if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                        value.record_stream(current)  # made on the side stream, used here
            yield item
    finally:
        stop.set()
        thread.join()


def choose_path(data: DataConfig, device: torch.device) -> str:
    """The path for ``data.decode`` and ``data.on_device`` on ``device`` (``auto``: ``gpu``
    decoding on CUDA devices, ``cpu`` elsewhere; holding on the device is decided per split,
    see :func:`open_split`)."""
    if data.decode == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    return data.decode


def open_split(
    data: DataConfig,
    manifest: Manifest,
    split: str,
    *,
    train: bool,
    device: torch.device,
    workers: int,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    sampler: str | None = None,
    say: Callable[[str], None] = print,
) -> SplitInput:
    """One split's input for a rank: held on the device where ``data.on_device`` asks for it
    (``auto``: on a CUDA device, when it fits in a quarter of the free memory), else streamed
    and decoded as :func:`choose_path` says."""
    augment = data.augment if train else "none"
    transform = build_batch_transform(augment, data.image_size, train)
    kwargs: dict[str, Any] = dict(
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        shuffle=train,
        equal_ranks=train,
        shuffle_buffer=data.shuffle_buffer,
        transform=transform,
        storage_options=data.storage_options,
        verify_sha256=data.verify_sha256,
        manifest=manifest,
        sampler=sampler or (data.sampler if train else "plain"),
        **reading_options(data),
    )
    held = _held(data, manifest, split, device, workers, kwargs, say)
    if held is not None:
        return SplitInput("device", held.stream, workers, device, held)
    path = choose_path(data, device)
    dataset = StreamingImageDataset(data.url, split, decode=path == "cpu", **kwargs)
    return SplitInput(path, dataset, workers, device)


def _wants_held(data: DataConfig, device: torch.device) -> bool:
    """``on_device: true``, or ``auto`` on a GPU (a CPU worker's memory is its host's)."""
    return data.on_device is True or (data.on_device == "auto" and device.type == "cuda")


def _held(
    data: DataConfig,
    manifest: Manifest,
    split: str,
    device: torch.device,
    workers: int,
    kwargs: dict[str, Any],
    say: Callable[[str], None],
) -> DeviceImageSet | None:
    if not _wants_held(data, device):
        return None
    if data.on_device == "auto":
        guess = nbytes_needed(manifest, split, (3, data.image_size, data.image_size))
        ok, _ = fits(device, guess)
        if not ok:
            return None
    try:
        return DeviceImageSet(data.url, split, device=device, num_workers=workers, **kwargs)
    except NotHeldOnDevice as exc:
        if data.on_device is True:
            raise LtrayError(f"data.on_device is true, but {exc}") from None
        say(f"[ltray] split {split!r} is streamed: {exc}")
        return None
