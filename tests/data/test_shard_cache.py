"""The node-local shard cache against a real S3-compatible server (moto's on 127.0.0.1), every
request counted by a proxy in front of it."""

from __future__ import annotations

import hashlib
import multiprocessing
import os

import pytest
from store_proxy import StoreProxy

from ltray import fs
from ltray.data import read_manifest
from ltray.data.shard_cache import ShardCache
from ltray.errors import LtrayError

# ltray.data.stream (torch) is imported inside the tests that read batches: the racing
# processes are spawned and import this module, and torch would cost each of them seconds

BUCKET = "ltray-cache-test"
ROOT = f"s3://{BUCKET}/synth"


@pytest.fixture(scope="module")
def proxy(s3_options, synth_ds):
    """The synthetic set (4 shards) uploaded to moto, and a counting proxy in front of it."""
    filesystem, _ = fs.get_fs(f"s3://{BUCKET}", s3_options)
    if not filesystem.exists(BUCKET):
        filesystem.mkdir(BUCKET)
    filesystem.put(synth_ds, f"{BUCKET}/synth", recursive=True)
    with StoreProxy(s3_options["client_kwargs"]["endpoint_url"]) as running:
        yield running


@pytest.fixture
def options(proxy, s3_options):
    """Storage options that reach the store through the proxy."""
    return dict(s3_options, client_kwargs={"endpoint_url": proxy.url})


@pytest.fixture
def shards(synth_ds):
    return read_manifest(synth_ds).shards("train")


def _indices(ds, workers):
    from ltray.data.stream import make_loader

    return [b["index"].tolist() for b in make_loader(ds, num_workers=workers)]


def test_epoch_two_reads_nothing_from_the_store(proxy, options, synth_ds, tmp_path):
    from ltray.data.stream import StreamingImageDataset, build_batch_transform

    cache = ShardCache(str(tmp_path / "cache"), 1 << 30)
    args = dict(
        batch_size=16, transform=build_batch_transform("cifar", 16, True), shuffle_buffer=64
    )
    ds = StreamingImageDataset(ROOT, "train", storage_options=options, cache=cache, **args)
    local = StreamingImageDataset(synth_ds, "train", **args)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        local.set_epoch(epoch)
        before = proxy.count()
        assert _indices(ds, workers=2) == _indices(local, workers=2)  # the same order
        made = proxy.count() - before
        assert made > 0 if epoch == 0 else made == 0, f"epoch {epoch}: {made} requests"
    # forked loader workers can break this process's pooled s3fs connections (fsspec's
    # asyncio loop is not fork-safe, s3fs issue 914): later tests start a fresh client
    s3fs = pytest.importorskip("s3fs")
    s3fs.S3FileSystem.clear_instance_cache()
    shards = read_manifest(synth_ds).shards("train")
    assert sorted(os.listdir(cache.folder)) == sorted(
        f"{s.sha256}{suffix}" for s in shards for suffix in (".lock", ".parquet")
    )


def _race(folder, options, info, barrier, results):
    barrier.wait()
    with ShardCache(folder, 1 << 30).open(ROOT, info, options) as handle:
        results.put(hashlib.sha256(handle.read()).hexdigest())


def test_two_processes_racing_for_a_shard_fetch_it_once(proxy, options, shards, tmp_path):
    info = shards[1]
    folder = str(tmp_path / "cache")
    proxy.latency_s = 0.2  # the first fetch is still running when the second process asks
    try:
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(2), context.Queue()
        racers = [
            context.Process(target=_race, args=(folder, options, info, barrier, results))
            for _ in range(2)
        ]
        before = proxy.count("GET", info.path)
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(60)
        assert [racer.exitcode for racer in racers] == [0, 0]
    finally:
        proxy.latency_s = 0.0
    assert [results.get(timeout=5) for _ in racers] == [info.sha256] * 2
    assert proxy.count("GET", info.path) - before == 1  # one fetch for the node
    assert sorted(os.listdir(folder)) == [f"{info.sha256}.lock", f"{info.sha256}.parquet"]


def test_truncated_or_corrupt_cached_file_is_fetched_again(proxy, options, shards, tmp_path):
    info = shards[0]
    cache = ShardCache(str(tmp_path / "cache"), 1 << 30)
    cache.open(ROOT, info, options).close()
    cached = cache.path(info)
    original = cached.read_bytes()

    cached.write_bytes(original[:-10])  # truncated: the size check on every open sees it
    before = proxy.count("GET", info.path)
    with pytest.warns(UserWarning, match=r"bytes, the manifest says .*fetching it again"):
        with cache.open(ROOT, info, options) as handle:
            assert handle.read() == original
    assert proxy.count("GET", info.path) - before == 1

    blob = bytearray(original)
    blob[len(blob) // 2] ^= 0x01  # same size, one bit flipped, written a second later
    cached.write_bytes(bytes(blob))
    mtime = cached.stat().st_mtime_ns + 1_000_000_000
    os.utime(cached, ns=(mtime, mtime))  # (within one clock tick the mtime could stay)
    with pytest.warns(UserWarning, match="sha256 differs from the manifest; deleted"):
        with cache.open(ROOT, info, options) as handle:
            assert handle.read() == original
    assert proxy.count("GET", info.path) - before == 2


def test_the_byte_limit_holds_and_evicts_the_least_recently_used(options, shards, tmp_path):
    limit = shards[0].bytes + shards[1].bytes + shards[2].bytes // 2  # two shards and a half
    cache = ShardCache(str(tmp_path / "cache"), limit)

    def cached():
        return {s.path for s in shards if cache.path(s).exists()}

    for k, info in enumerate([shards[0], shards[1], shards[0], shards[2], shards[1]]):
        cache.open(ROOT, info, options).close()
        assert sum(cache.path(s).stat().st_size for s in shards if s.path in cached()) <= limit
        if k == 3:  # shard 0 was used again after shard 1
            assert cached() == {shards[0].path, shards[2].path}
    assert cached() == {shards[1].path, shards[2].path}  # then 0 was the least recent


def test_a_store_copy_unlike_the_manifest_is_never_cached(s3_options, options, shards, tmp_path):
    info = shards[2]
    url = fs.join_url(ROOT, info.path)
    good = fs.read_bytes(url, s3_options)
    fs.write_bytes(url, good[:-1] + bytes([good[-1] ^ 1]), s3_options)
    cache = ShardCache(str(tmp_path / "cache"), 1 << 30)
    try:
        with pytest.raises(LtrayError, match=r"shard train/part-00002.parquet: sha256 differs"):
            cache.open(ROOT, info, options)
    finally:
        fs.write_bytes(url, good, s3_options)
    assert not cache.path(info).exists()
    assert [n for n in os.listdir(cache.folder) if ".tmp-" in n] == []


def test_a_shard_over_the_limit_and_a_local_data_set(options, shards, synth_ds, tmp_path):
    from ltray.data.stream import StreamingImageDataset

    small = ShardCache(str(tmp_path / "cache"), shards[0].bytes - 1)
    with pytest.raises(LtrayError, match=r"shard train/part-00000.parquet \(\d+ bytes\) is larger"):
        StreamingImageDataset(ROOT, "train", batch_size=8, storage_options=options, cache=small)
    with pytest.warns(UserWarning, match="data.cache is off: .* is on a local file system"):
        ds = StreamingImageDataset(synth_ds, "train", batch_size=8, cache=small)
    assert ds.cache is None


def test_an_unchanged_copy_is_not_hashed_again(options, shards, tmp_path, monkeypatch):
    """Loader workers are new processes each epoch: a copy verified once (by any process) and
    unchanged since is trusted on its identity; a rewritten one is hashed again."""
    from ltray.data import shard_cache

    info = shards[0]
    cache = ShardCache(str(tmp_path / "cache"), 1 << 30)
    cache.open(ROOT, info, options).close()
    hashed = []
    real = shard_cache.fs.sha256_of_stream
    monkeypatch.setattr(shard_cache.fs, "sha256_of_stream", lambda h: hashed.append(1) or real(h))
    ShardCache(cache.folder, 1 << 30).open(ROOT, info, options).close()
    assert hashed == []
    later = cache.path(info).stat().st_mtime_ns + 1_000_000_000
    os.utime(cache.path(info), ns=(later, later))  # rewritten with the same bytes
    ShardCache(cache.folder, 1 << 30).open(ROOT, info, options).close()
    ShardCache(cache.folder, 1 << 30).open(ROOT, info, options).close()
    assert hashed == [1]  # once, then its identity is the verified one again
