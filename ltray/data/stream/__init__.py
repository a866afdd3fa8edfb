"""Streaming a prepared data set: partition and order (pure functions of seed, epoch, rank,
world size, loader workers and batch size), augmentation (per image, or per batch on the
device: batch_augment), and the IterableDataset."""

from ltray.data.stream.dataset import StreamingImageDataset, make_loader, reading_options
from ltray.data.stream.order import epoch_batches, plan_worker
from ltray.data.stream.transforms import AUGMENTS, build_transform

__all__ = [
    "AUGMENTS",
    "StreamingImageDataset",
    "build_transform",
    "epoch_batches",
    "make_loader",
    "reading_options",
    "plan_worker",
]
