"""Streaming and decode throughput of ltray's data path, each against a bare baseline.

    python bench/bench_data.py                  # synthetic set (20,000 rows, 64 px JPEG) + CIFAR
    python bench/bench_data.py --rows 50000 --loader-workers 4

Builds (or reuses, under --cache) a prepared synthetic data set and, when ../shared/data holds
the CIFAR-10 archive, CIFAR-10-LT (IF 100). For each it prints, measured in the same run:

(a) streaming without decode: rows/s and MB/s of encoded image bytes through
    StreamingImageDataset(decode=False) (shuffled epoch order, in-process and with loader
    workers), against a plain sequential pyarrow read of the same shard files (one process,
    every row group in file order). Ratio = reader / plain. The loader-worker figure
    includes starting the workers (they are forked afresh every epoch).
(b) CPU decode: images/s through the reader's decode path (decode=True, no transform, one
    process) and through ltray.data.decode.decode_rgb alone, against a bare
    torchvision.io.decode_image loop and a PIL loop over the same bytes. Ratio = ours / bare
    torchvision. One intra-op thread throughout, so the figures are per core.

Every figure is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow.parquet as pq
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from ltray.data import read_manifest
from ltray.data.decode import decode_rgb
from ltray.data.prepare import sources
from ltray.data.prepare.orchestrator import PrepareOptions, prepare, prepare_from
from ltray.data.stream import StreamingImageDataset, make_loader
from ltray.errors import LtrayError

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
# where bench/gpu_check.sh's carried copy lies on a GPU box (no ../shared there)
CIFAR_COPY = Path(__file__).resolve().parents[1] / ".device-data" / "cifar10-jpeg.tar.gz"
PHOTO_SIDE = 400  # a typical ImageNet photo's shorter side is 333-500 px
GPU_PHOTOS_PER_CLASS = 20  # bench_pipeline.py --full on a GPU: 8 batches of 256 an epoch


def dataset(cache: Path, name: str, make: Callable[[str], None]) -> str:
    """A prepared data set under cache/name, built once."""
    out = cache / name
    try:
        read_manifest(str(out))
    except LtrayError:
        print(f"preparing {out} ...", flush=True)
        make(str(out))
    return str(out)


def small_set(cache: Path) -> tuple[str, str]:
    """(url, description) of a 32 px set: CIFAR-10-LT IF 100 from the archive (../shared/data
    or .device-data), else a generated one of about its size."""
    archive = next((p for p in (CIFAR, CIFAR_COPY) if p.is_file()), None)
    if archive is None:
        plan = sources.synthetic(classes=10, n_max=1200, imbalance=10.0, image_size=32)
        url = dataset(cache, "synthetic-32px", lambda out: prepare(plan, out))
        return url, "synthetic 32 px JPEG (no CIFAR archive here)"
    url = dataset(
        cache,
        "cifar10-lt-100",
        lambda out: prepare_from(lambda s: sources.cifar_lt(str(archive), s, imbalance=100), out),
    )
    return url, "CIFAR-10-LT IF 100 (32 px JPEG)"


def photo_set(cache: Path, per_class: int) -> str:
    """A generated set of photos' size: 100 balanced classes of ``per_class`` JPEGs of
    PHOTO_SIDE px, train split only."""
    plan = sources.synthetic(
        classes=100, n_max=per_class, imbalance=1.0, image_size=PHOTO_SIDE, test_per_class=0
    )
    return dataset(cache, f"synthetic-{PHOTO_SIDE}px-{per_class}", lambda out: prepare(plan, out))


REPEATS = 3


def timed(fn: Callable[[], tuple[int, int]]) -> tuple[float, int, int]:
    """(median seconds of REPEATS calls, rows, bytes) of ``fn``, which returns (rows, bytes)."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        rows, nbytes = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), rows, nbytes


def plain_read(url: str, split: str) -> tuple[int, int]:
    """Every shard, every row group in file order, with pyarrow alone."""
    rows = nbytes = 0
    for shard in read_manifest(url).shards(split):
        parquet = pq.ParquetFile(str(Path(url) / shard.path))
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["image", "label", "id"])
            images = table.column("image").to_pylist()
            rows += len(images)
            nbytes += sum(len(b) for b in images)
    return rows, nbytes


def reader_read(url: str, split: str, workers: int, decode: bool) -> tuple[int, int]:
    ds = StreamingImageDataset(url, split, batch_size=256, decode=decode, shuffle_buffer=8192)
    ds.set_epoch(1)
    rows = nbytes = 0
    for batch in make_loader(ds, num_workers=workers):
        rows += len(batch["label"])
        if not decode:
            nbytes += sum(len(b) for b in batch["image"])
    return rows, nbytes


def all_bytes(url: str, split: str, limit: int) -> list[bytes]:
    out: list[bytes] = []
    for shard in read_manifest(url).shards(split):
        out += pq.read_table(str(Path(url) / shard.path), columns=["image"]).column(0).to_pylist()
        if len(out) >= limit:
            break
    return out[:limit]


def loop(images: Iterable[bytes], decode: Callable[[bytes], object]) -> tuple[int, int]:
    n = 0
    for data in images:
        decode(data)
        n += 1
    return n, 0


def bare_torchvision(data: bytes) -> torch.Tensor:
    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)


def bare_pil(data: bytes) -> object:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").load()


def line(label: str, seconds: float, rows: int, nbytes: int, base: float | None) -> str:
    rate = rows / seconds
    mb = f"{nbytes / seconds / 1e6:8.1f} MB/s" if nbytes else " " * 13
    ratio = f"  ratio {rate / base:5.2f}" if base else ""
    return f"  {label:<44} {rate:10,.0f} rows/s {mb}{ratio}"


def bench(url: str, title: str, workers: int, decode_rows: int) -> None:
    m = read_manifest(url)
    rows = m.num_rows("train")
    mb = sum(s.bytes for s in m.shards("train")) / 1e6
    print(f"\n{title}: {rows:,} train rows, {mb:.1f} MB of shards")
    print("(a) streaming, no decode")
    plain_read(url, "train")  # warm the page cache for both
    base_s, base_rows, base_bytes = timed(lambda: plain_read(url, "train"))
    base = base_rows / base_s
    print(line("plain pyarrow, sequential, 1 process", base_s, base_rows, base_bytes, None))
    for w in (0, workers):
        s, r, b = timed(lambda w=w: reader_read(url, "train", w, decode=False))
        assert r == rows
        print(line(f"StreamingImageDataset, loader workers={w}", s, r, b, base))
    print("(b) CPU decode to uint8 RGB CHW, one thread")
    images = all_bytes(url, "train", decode_rows)
    loop(images[:200], bare_torchvision)
    tv_s, n, _ = timed(lambda: loop(images, bare_torchvision))
    tv = n / tv_s
    print(line("bare torchvision.io.decode_image loop", tv_s, n, 0, None))
    pil_s, n, _ = timed(lambda: loop(images, bare_pil))
    print(line("bare PIL open + convert('RGB') loop", pil_s, n, 0, tv))
    ours_s, n, _ = timed(lambda: loop(images, decode_rgb))
    print(line("ltray.data.decode.decode_rgb loop", ours_s, n, 0, tv))
    s, r, _ = timed(lambda: reader_read(url, "train", 0, decode=True))
    print(line("StreamingImageDataset decode=True, workers=0", s, r, 0, tv))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic train rows")
    parser.add_argument("--image-size", type=int, default=64, help="synthetic image side")
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--decode-rows", type=int, default=10_000, help="images per decode loop")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ltray-bench"))
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    args = parser.parse_args()
    global REPEATS
    REPEATS = max(1, args.repeats)
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)

    classes = 10
    plan = sources.synthetic(
        classes=classes,
        n_max=max(1, args.rows // classes),
        imbalance=1.0,
        image_size=args.image_size,
        test_per_class=0,
    )
    name = f"synthetic-{args.rows}-{args.image_size}px"
    url = dataset(args.cache, name, lambda out: prepare(plan, out, PrepareOptions()))
    bench(url, f"synthetic {args.image_size}px JPEG", args.loader_workers, args.decode_rows)
    if CIFAR.is_file():

        def make_cifar(out: str) -> None:
            prepare_from(lambda s: sources.cifar_lt(str(CIFAR), s, imbalance=100), out)

        url = dataset(args.cache, "cifar10-lt-100", make_cifar)
        bench(url, "CIFAR-10-LT IF 100 (32px JPEG)", args.loader_workers, args.decode_rows)
    else:
        print(f"\n(no {CIFAR}: CIFAR part skipped)")


if __name__ == "__main__":
    main()
