"""A split small enough to hold on the device: decoded once, gathered and augmented there.

A set that fits comfortably in GPU memory (CIFAR-LT: 50,000 x 3 x 32 x 32 bytes = 147 MiB) need
not be read, decoded and copied to the device every epoch. :class:`DeviceImageSet` reads every
row once through the streaming reader (same shards, checks, cache and decode), keeps the
images as one uint8 [N, 3, H, W] tensor and the labels as int64 [N] on the device, and each
epoch gathers batches from them by row index.

The order is the streaming path's, exactly: the set keeps a :class:`StreamingImageDataset` with
the same seed, rank, batch size, shuffle, sampler and loader-worker count, asks it for each
worker's plan (:func:`ltray.data.stream.order.plan_worker`, with the sampler's repeat counts)
and interleaves them as a DataLoader does (:func:`ltray.data.stream.order.round_robin`). So a
batch holds the rows the streaming loader would have yielded at that position, its canonical
index seeds the same augmentation generator (:func:`ltray.data.stream.dataset.batch_seed`),
and a resume at batch b needs the same worker count, as the streaming path does: the checkpoint
position means the same thing on either path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ltray.data.gpu_decode import to_device
from ltray.data.manifest import Manifest
from ltray.data.stream import order
from ltray.data.stream.dataset import (
    StreamingImageDataset,
    batch_generator,
    check_labels,
    make_loader,
)
from ltray.data.stream.transforms import BatchTransform
from ltray.errors import LtrayError

# "comfortably": the set takes at most this share of the device's free memory, leaving the
# rest to the model, its activations and the allocator's fragmentation
FREE_SHARE = 0.25
# what a user whose set cannot be held does instead
STREAM_INSTEAD = "set data.on_device: false to stream it instead"


class NotHeldOnDevice(LtrayError):
    """The split cannot be held on the device (images of several sizes, or too big): the
    trainer then streams it, or refuses where holding it was asked for explicitly."""


def nbytes_needed(manifest: Manifest, split: str, image_shape: tuple[int, ...]) -> int:
    """Device bytes a split takes held as uint8 images of ``image_shape`` ([3, H, W], the stored
    size: every row must share it) plus int64 labels."""
    return manifest.num_rows(split) * (math.prod(image_shape) + 8)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def fits(device: torch.device | str, nbytes: int) -> tuple[bool, str]:
    """Whether ``nbytes`` fit comfortably on ``device``, and why (for a log line).

    On CUDA: at most a quarter of the free memory ``torch.cuda.mem_get_info`` reports now. On
    any other device always true (host memory is not checked: the trainer holds a set on the
    CPU only when asked to)."""
    device = torch.device(device)
    if device.type != "cuda":
        return True, f"{_mib(nbytes)} on {device.type} (not checked)"
    free, _ = torch.cuda.mem_get_info(device)
    budget = int(free * FREE_SHARE)
    verdict = "within" if nbytes <= budget else "over"
    reason = (
        f"{_mib(nbytes)} is {verdict} a quarter of the {_mib(free)} free on {device} "
        f"({_mib(budget)})"
    )
    return nbytes <= budget, reason


class DeviceImageSet:
    """One split as ``images`` uint8 [N, 3, H, W] and ``labels`` int64 [N] on ``device``, row i
    being the split's global row i; :meth:`batches` yields exactly the batches that
    ``make_loader(StreamingImageDataset(...same arguments...), num_workers)`` would.

    The keyword arguments are the streaming reader's (one place can build either);
    ``num_workers`` is the loader-worker count the streaming path would use (0 behaves as 1,
    as in the reader): the order depends on it. ``transform`` is a batch transform
    (:data:`BatchTransform`), run on the device with a CPU generator seeded as the reader seeds
    its per-image transform. Reading needs every image of the split at one size; a split with
    images of different sizes, or that does not :func:`fit <fits>` on the device, is refused.
    """

    def __init__(
        self,
        url: str,
        split: str,
        *,
        device: torch.device | str,
        num_workers: int = 0,
        transform: BatchTransform | None = None,
        **reader: Any,
    ) -> None:
        """``reader``: :class:`StreamingImageDataset`'s keyword arguments (batch_size, rank,
        world_size, seed, shuffle, shuffle_buffer, storage_options, verify_sha256, drop_last,
        equal_ranks, manifest, sampler, read_ahead, read_ahead_bytes, cache), bar ``decode``
        and ``transform``."""
        if num_workers < 0:
            raise LtrayError(f"num_workers must be >= 0, got {num_workers}")
        # the streaming dataset whose batches this set replays; it checks the arguments
        # before anything is read, and reads no image itself
        self.stream = StreamingImageDataset(url, split, **reader)
        self.split = split
        self.device = torch.device(device)
        self.num_workers = max(1, num_workers)
        self.transform = transform
        images, labels = self._read()
        check_labels(labels.numpy(), self.stream.manifest.num_classes, split)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)

    def _read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's decoded image and label on the host, by global row index: read with
        the stream's shards, checks and cache, every row once in file order, one image a
        batch, so that sizes are checked here (the reader's collate would advise a resizing
        transform, which does not apply)."""
        stream = self.stream
        reader = StreamingImageDataset(
            stream.url,
            self.split,
            batch_size=1,
            shuffle=False,
            storage_options=stream.storage_options,
            verify_sha256=stream.verify_sha256,
            manifest=stream.manifest,
            read_ahead=stream.read_ahead,
            read_ahead_bytes=stream.read_ahead_bytes,
            cache=stream.cache,  # None where the stream turned it off (a local set)
        )
        n = reader.num_rows
        labels = torch.empty(n, dtype=torch.int64)
        images = torch.empty((0, 3, 0, 0), dtype=torch.uint8)
        first_shape: tuple[int, ...] | None = None
        for batch in make_loader(reader, num_workers=0):
            (row,), image = batch["index"].tolist(), batch["image"][0]
            if first_shape is None:  # row 0
                first_shape = tuple(image.shape)
                self._check_fits(reader.manifest, first_shape)
                images = torch.empty((n, *first_shape), dtype=torch.uint8)
            elif tuple(image.shape) != first_shape:
                raise NotHeldOnDevice(
                    f"split {self.split!r}: row {row} is {_shape_text(image.shape)}, row 0 "
                    f"{_shape_text(first_shape)}: a set held on the device needs images of "
                    f"one size; {STREAM_INSTEAD}"
                )
            images[row] = image
            labels[row] = batch["label"][0]
        return images, labels

    def _check_fits(self, manifest: Manifest, image_shape: tuple[int, ...]) -> None:
        """Refuse before decoding the rest when the stored size makes the set too big (the
        caller's estimate may have assumed the training size)."""
        ok, reason = fits(self.device, nbytes_needed(manifest, self.split, image_shape))
        if not ok:
            raise NotHeldOnDevice(
                f"split {self.split!r} of {_shape_text(image_shape)} images does not fit on the "
                f"device: {reason}; {STREAM_INSTEAD}"
            )

    def num_batches(self) -> int:
        """Batches this rank yields in a whole epoch, as the streaming reader's."""
        return self.stream.num_batches(self.num_workers)

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """The rank's batches of ``epoch`` from canonical batch ``start_batch`` on, each a dict:
        ``image`` uint8 [B, 3, H, W] (or the transform's size) and ``label`` int64 [B] on the
        device, ``index`` int64 [B] (global rows) on the CPU, ``batch`` the canonical index."""
        self.stream.set_epoch(epoch, start_batch)  # checks epoch and start_batch
        plans = [self.stream.plan(self.num_workers, w) for w in range(self.num_workers)]
        return self._gather(epoch, order.round_robin(plans))

    def _gather(
        self, epoch: int, planned: list[tuple[int, np.ndarray]]
    ) -> Iterator[dict[str, Any]]:
        for batch_id, rows in planned:
            index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
            on_device = to_device(index, self.device)  # queued behind the step, no host sync
            images = self.images[on_device]
            if self.transform is not None:
                stream = self.stream
                images = self.transform(
                    images, batch_generator(stream.seed, epoch, stream.rank, batch_id)
                )
            yield {
                "image": images,
                "label": self.labels[on_device],
                "index": index,
                "batch": batch_id,
            }


def _shape_text(shape: tuple[int, ...] | torch.Size) -> str:
    return "x".join(str(d) for d in shape)
