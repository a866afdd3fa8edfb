"""Images/s of the streaming reader from a slow object store, against the same reader on local
files in the same run: no read-ahead, read-ahead, read-ahead + the node-local shard cache.

    python bench/bench_remote.py                          # 0, 20 and 50 ms per request, 200 MB/s
    python bench/bench_remote.py --latency-ms 50 --bandwidth-mb 100 --read-ahead 8

Prepares (once, under --cache) a synthetic set of --rows 64 px JPEGs in shards of 8 MB and
row groups of --row-group-rows, uploads it to a local S3-compatible server (moto's, in a
process of its own), and puts
tests/store_proxy.py's proxy in front of it (in another): each request waits --latency-ms, and all
responses together share --bandwidth-mb MB/s. For each latency it reads one shuffled epoch of
the train split, in one process (loader workers=0, one torch thread), without decode and with
decode (no transform), through:

- local files (the reference of the ratios);
- the store, read_ahead=0 (each row group read when needed);
- the store, read_ahead=--read-ahead;
- the store, read-ahead + data.cache: epoch 1 (empty cache: shards are fetched) and epoch 2
  (from the cache), with the requests each epoch made to the store.

Columns: img/s over the whole epoch; "steady": img/s after the first batch; "first": seconds
to the first batch (opening shards and the first reads, paid by every loader worker each
epoch); ratios: both rates over the local figures of the same mode; requests to the store
during the epoch. The local figures are the median of three epochs; the remote ones are one
epoch each.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_data import dataset  # noqa: E402
from processes import free_port, healthy, wait_for  # noqa: E402
from store_proxy import StoreProxy  # noqa: E402

from ltray import fs  # noqa: E402
from ltray.data import read_manifest  # noqa: E402
from ltray.data.prepare import sources  # noqa: E402
from ltray.data.prepare.orchestrator import PrepareOptions, prepare  # noqa: E402
from ltray.data.shard_cache import ShardCache  # noqa: E402
from ltray.data.shards import ShardLayout  # noqa: E402
from ltray.data.stream import StreamingImageDataset, make_loader  # noqa: E402

BUCKET = "ltray-bench"


@dataclass
class Epoch:
    """One epoch's timing: the whole of it, and its first batch (the start-up a worker pays
    each epoch: opening shards, the first reads)."""

    seconds: float
    first_s: float
    rows: int
    first_rows: int

    def rate(self) -> float:
        return self.rows / self.seconds

    def steady_rate(self) -> float:
        """img/s after the first batch."""
        return (self.rows - self.first_rows) / (self.seconds - self.first_s)


def epoch(
    url: str, decode: bool, epoch_no: int = 1, proxy: ProxyProcess | None = None, **kw
) -> Epoch:
    """One shuffled epoch of the train split, in this process; the proxy's counts start after
    the dataset read its manifest, as a trainer reads it once."""
    ds = StreamingImageDataset(url, "train", batch_size=256, decode=decode, **kw)
    ds.set_epoch(epoch_no)
    if proxy is not None:
        proxy.reset()
    start = time.perf_counter()
    first_s, rows, first_rows = 0.0, 0, 0
    for batch in make_loader(ds, num_workers=0):
        rows += len(batch["label"])
        if not first_rows:
            first_s, first_rows = time.perf_counter() - start, rows
    return Epoch(time.perf_counter() - start, first_s, rows, first_rows)


def line(label: str, run: Epoch, base: Epoch | None, extra: str = "") -> None:
    ratios = ""
    if base is not None:
        ratios = f"{run.rate() / base.rate():6.2f} {run.steady_rate() / base.steady_rate():6.2f}"
    print(
        f"  {label:<32} {run.rate():9,.0f} {run.steady_rate():9,.0f} {run.first_s:6.2f} "
        f"{ratios:<13}  {extra}",
        flush=True,
    )


class ProxyProcess:
    """tests/store_proxy.py's proxy in a process of its own (as the store's network is not
    on the reader's CPU), driven through a pipe: its URL, request count, reset."""

    def __init__(self, upstream: str, latency_s: float, bytes_per_s: float) -> None:
        self.latency_s, self.bytes_per_s = latency_s, bytes_per_s
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        args = (upstream, latency_s, bytes_per_s, child)
        self._process = context.Process(target=_serve_proxy, args=args, daemon=True)

    def __enter__(self) -> ProxyProcess:
        self._process.start()
        self.url = self._ask("url")
        return self

    def __exit__(self, *exc) -> None:
        self._ask("stop")
        self._process.join(10)

    def _ask(self, what: str):
        self._conn.send(what)
        return self._conn.recv()

    def count(self) -> int:
        return self._ask("count")

    def reset(self) -> None:
        self._ask("reset")


def _serve_proxy(upstream: str, latency_s: float, bytes_per_s: float, conn) -> None:
    with StoreProxy(upstream, latency_s, bytes_per_s) as proxy:
        answers = {"url": lambda: proxy.url, "count": proxy.count, "reset": proxy.reset}
        while (what := conn.recv()) != "stop":
            conn.send(answers[what]())
        conn.send(None)


def upload(local: str, options: dict) -> str:
    filesystem, _ = fs.get_fs(f"s3://{BUCKET}", options)
    if not filesystem.exists(BUCKET):
        filesystem.mkdir(BUCKET)
    filesystem.put(local, f"{BUCKET}/ds", recursive=True)
    return f"s3://{BUCKET}/ds"


def bench_latency(local: str, remote: str, proxy: ProxyProcess, options: dict, args) -> None:
    print(
        f"\nlatency {proxy.latency_s * 1e3:.0f} ms per request, "
        f"{proxy.bytes_per_s / 1e6:.0f} MB/s shared"
    )
    opts = dict(options, client_kwargs={"endpoint_url": proxy.url})
    for decode in (False, True):
        print(f" decode={decode}")
        print(f"  {'':<32} {'img/s':>9} {'steady':>9} {'first':>6} {'ratios':<13}  requests")
        epoch(local, decode)  # warm the page cache
        runs = sorted((epoch(local, decode) for _ in range(3)), key=Epoch.rate)
        base = runs[1]  # the median epoch
        line(f"local files, read_ahead={args.read_ahead}", base, None)
        for depth in (0, args.read_ahead):
            run = epoch(remote, decode, proxy=proxy, storage_options=opts, read_ahead=depth)
            line(f"store, read_ahead={depth}", run, base, str(proxy.count()))
        folder = tempfile.mkdtemp(prefix="ltray-bench-cache-")
        try:
            cache = ShardCache(folder, 1 << 34)
            for epoch_no in (1, 2):
                run = epoch(
                    remote, decode, epoch_no, proxy, storage_options=opts, cache=cache,
                    read_ahead=args.read_ahead,
                )  # fmt: skip
                line(f"store + cache, epoch {epoch_no}", run, base, str(proxy.count()))
        finally:
            shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic train rows")
    parser.add_argument("--row-group-rows", type=int, default=1024)
    parser.add_argument("--latency-ms", type=str, default="0,20,50", help="comma-separated")
    parser.add_argument("--bandwidth-mb", type=float, default=200.0, help="MB/s, all responses")
    parser.add_argument("--read-ahead", type=int, default=4)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ltray-bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)

    classes = 10
    plan = sources.synthetic(
        classes=classes, n_max=args.rows // classes, imbalance=1.0, image_size=64, test_per_class=0
    )
    layout = ShardLayout(shard_bytes=8 << 20, row_group_rows=args.row_group_rows)
    name = f"synthetic-{args.rows}-64px-8mb-shards-{args.row_group_rows}"
    local = dataset(args.cache, name, lambda out: prepare(plan, out, PrepareOptions(layout=layout)))
    m = read_manifest(local)
    shards = m.shards("train")
    groups = sum(len(s.row_groups) for s in shards)
    megabytes = sum(s.bytes for s in shards) / 1e6
    print(
        f"synthetic 64 px JPEG: {m.num_rows('train'):,} rows, {megabytes:.1f} MB in "
        f"{len(shards)} shards, {groups} row groups of up to {args.row_group_rows} rows"
    )
    # the store runs in a process of its own, as a real one runs elsewhere: in this process
    # it would take the interpreter lock from the reader
    endpoint = f"http://127.0.0.1:{free_port()}"
    port = endpoint.rsplit(":", 1)[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: healthy(endpoint), 30, "the moto server")
        options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": endpoint}}
        remote = upload(local, options)
        for latency in (float(x) for x in args.latency_ms.split(",")):
            with ProxyProcess(endpoint, latency / 1e3, args.bandwidth_mb * 1e6) as proxy:
                bench_latency(local, remote, proxy, options, args)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
