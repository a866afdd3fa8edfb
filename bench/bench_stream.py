"""ltray's reader beside Ray Data over the same shards: decoded, augmented uint8 batches per second.

    python bench/bench_stream.py                     # 2 processes each, CIFAR-10-LT train split
    python bench/bench_stream.py --processes 4 --repeats 5

Both sides turn the same JPEG bytes of the same Parquet shards (bench/ray_benchmarks.py) into
uint8 [B, 3, 32, 32] torch batches of --batch-size rows, decoding with the same function
(ltray.data.decode.decode_rgb) and augmenting with the same transform (the cifar pad-4 crop
and flip), in --processes CPU processes besides the one that iterates:

- ltray: StreamingImageDataset (decode on, its shuffled order: permuted row groups and the
  bounded shuffle buffer) through make_loader with --processes loader workers;
- Ray Data: ray.data.read_parquet(shard paths, shuffle="files") + map_batches(decode and
  augment a batch, as tasks) + iter_torch_batches, on a local Ray started in this process with
  num_cpus=--processes, so at most that many tasks run at once. Ray 2.60's read_parquet
  packs row groups into read tasks of up to 128 MiB (RAY_DATA_PARQUET_BIN_PACKING_BYTES):
  a set smaller than that is read, and decoded, in one task; --ray-bin-mb sets that size.

Per epoch (a fresh iterator, as a trainer starts one each epoch; the figures include building
it) it prints rows/s over the whole epoch, rows/s after the first batch, and the seconds to the
first batch; each is the median of --repeats epochs after one warm-up epoch per side, the two
readers taking turns epoch by epoch (Ray runs throughout, as it does under Ray Train). Last,
the ratio of the two readers' rows/s over the whole epoch. (Where Ray Data decodes the set in
one task, its first batch comes when the task ends: its "steady" figure is then only the copy
of finished batches to the driver.) Without Ray installed it says so and exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_remote import Epoch  # noqa: E402
from ray_benchmarks import prepared_set, skipped_without_ray  # noqa: E402

from ltray.data import read_manifest  # noqa: E402
from ltray.data.decode import decode_rgb  # noqa: E402
from ltray.data.stream import StreamingImageDataset, build_batch_transform, make_loader  # noqa: E402

IMAGE_SIZE = 32
TRANSFORM = build_batch_transform("cifar", IMAGE_SIZE, train=True)


def timed_epoch(batches: Callable[[], Iterable[dict]]) -> Epoch:
    """One pass over ``batches()`` (building the iterator is timed too); checks each batch's
    images are uint8 [B, 3, S, S]."""
    start = time.perf_counter()
    first_s, rows, first_rows = 0.0, 0, 0
    for batch in batches():
        image = batch["image"]
        assert image.dtype == torch.uint8 and tuple(image.shape[1:]) == (3, IMAGE_SIZE, IMAGE_SIZE)
        rows += len(image)
        if not first_rows:
            first_s, first_rows = time.perf_counter() - start, rows
    return Epoch(time.perf_counter() - start, first_s, rows, first_rows)


def ltray_batches(url: str, batch_size: int, workers: int, epoch: int) -> Iterable[dict]:
    dataset = StreamingImageDataset(url, "train", batch_size=batch_size, transform=TRANSFORM)
    dataset.set_epoch(epoch)
    return make_loader(dataset, num_workers=workers)


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data's map_batches function: the reader's decode and transform, one batch."""
    generator = torch.Generator().manual_seed(int(batch["label"][0]))
    images = TRANSFORM([decode_rgb(data) for data in batch["image"]], generator)
    return {"image": images.numpy(), "label": batch["label"].astype(np.int64)}


def ray_data_batches(paths: list[str], batch_size: int) -> Iterable[dict]:
    import ray.data

    dataset = ray.data.read_parquet(paths, shuffle="files").select_columns(["image", "label"])
    dataset = dataset.map_batches(decode_batch, batch_size=batch_size, batch_format="numpy")
    return dataset.iter_torch_batches(batch_size=batch_size)


def start_ray(cpus: int) -> None:
    """A local Ray in this process, quiet: no dashboard, no progress bars, no workers' output."""
    import ray
    import ray.data

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)


def median_epochs(
    readers: list[Callable[[], Iterable[dict]]], repeats: int, rows: int
) -> list[Epoch]:
    """Each reader's median epoch by rows/s of ``repeats`` after one warm-up; the readers take
    turns, epoch by epoch, so that both meet the same load of a shared machine."""
    runs: list[list[Epoch]] = [[] for _ in readers]
    for repeat in range(repeats + 1):
        for reader, kept in zip(readers, runs, strict=True):
            run = timed_epoch(reader)
            assert run.rows == rows, f"an epoch gave {run.rows} rows, not {rows}"
            if repeat:
                kept.append(run)
    return [sorted(kept, key=Epoch.rate)[len(kept) // 2] for kept in runs]


def line(label: str, run: Epoch) -> None:
    print(f"  {label:<46} {run.rate():9,.0f} {run.steady_rate():9,.0f} {run.first_s:7.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="loader workers / Ray CPUs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many epochs")
    parser.add_argument("--shard-mb", type=float, default=1.0, help="shard size of the set")
    parser.add_argument(
        "--synthetic-rows", type=int, help="a generated set of this many rows instead of CIFAR"
    )
    parser.add_argument(
        "--ray-bin-mb", type=float, help="Ray Data's read task size (default: Ray's, 128 MiB)"
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ltray-bench"))
    args = parser.parse_args(argv)
    if args.processes < 1 or args.repeats < 1:
        parser.error("--processes and --repeats must be at least 1")
    if skipped_without_ray("bench_stream"):
        return
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    url, title = prepared_set(args.cache, args.shard_mb, args.synthetic_rows)
    manifest = read_manifest(url)
    shards = manifest.shards("train")
    rows = manifest.num_rows("train")
    paths = [str(Path(url) / shard.path) for shard in shards]
    print(
        f"{title}: {rows:,} train rows in {len(shards)} shards; batches of {args.batch_size}, "
        f"{args.processes} processes each; median of {args.repeats} epochs"
    )
    print(f"  {'':<46} {'rows/s':>9} {'steady':>9} {'first s':>7}")
    bins = "128"
    if args.ray_bin_mb:  # read where the read tasks are planned: in Ray's workers too
        os.environ["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] = str(int(args.ray_bin_mb * 2**20))
        bins = f"{args.ray_bin_mb:g}"
    start_ray(args.processes)
    epochs = itertools.count(1)
    ours, theirs = median_epochs(
        [
            lambda: ltray_batches(url, args.batch_size, args.processes, next(epochs)),
            lambda: ray_data_batches(paths, args.batch_size),
        ],
        args.repeats,
        rows,
    )
    line(f"ltray StreamingImageDataset, {args.processes} loader workers", ours)
    line(f"Ray Data, {args.processes} CPUs, read tasks <= {bins} MiB", theirs)
    print(
        f"ratio ltray/ray_data = {ours.rate() / theirs.rate():.2f} "
        f"(first batch after {ours.first_s:.2f} s against {theirs.first_s:.2f} s)"
    )


if __name__ == "__main__":
    main()
