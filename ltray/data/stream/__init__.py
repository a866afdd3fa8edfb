"""Streaming a prepared data set: partition and order (pure functions of seed, epoch, rank,
world size, loader workers and batch size), augmentation (whole batches, on the CPU in the
loader or on the device: transforms), and the IterableDataset."""

from ltray.data.stream.dataset import StreamingImageDataset, make_loader, reading_options
from ltray.data.stream.order import epoch_batches, plan_worker
from ltray.data.stream.transforms import AUGMENTS, build_batch_transform

__all__ = [
    "AUGMENTS",
    "StreamingImageDataset",
    "build_batch_transform",
    "epoch_batches",
    "make_loader",
    "reading_options",
    "plan_worker",
]
