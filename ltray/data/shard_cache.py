"""A node-local cache of shards fetched from an object store (``data.cache``).

The first epoch fetches each shard once per node into a local folder, shared by every process
on that node (loader workers, ranks); later epochs read the local copy. A shard's cache entry
is ``<folder>/<sha256>.parquet``, its sha256 taken from the manifest: two data sets never
collide, and a shard replaced in the store is a miss.

Safety, shard by shard:

- A fetch holds an exclusive ``fcntl.flock`` on ``<sha256>.lock``; other processes wanting the
  same shard wait on it and then find the verified file, so a shard crosses the network once
  per node.
- A fetch writes a temporary file in the folder, checks its size and sha256 against the
  manifest, and only then ``os.replace``-s it into place (atomic): a reader never sees half a
  shard, and a store copy that differs from the manifest is an error, never cached.
- Whoever verified a copy records its identity (device, inode, size, mtime) in the shard's
  lock file. Each open checks the cached file's size, and hashes it again whenever its
  identity differs from that record (a file rewritten, replaced or copied in by hand); a
  truncated or corrupt copy is deleted and fetched again, never read. An unchanged file is not
  hashed again: loader workers are new processes every epoch, and hashing each shard in each
  of them would read the whole data set once per worker per epoch. A change that keeps size
  and mtime (a bit flipped by the disk) is not caught by the cache.
- Each open touches the lock file (its mtime is the shard's last use). Before a fetch, the
  least recently used shards are deleted until the new one fits under ``max_bytes``. Eviction
  takes the shard's lock without waiting and skips a shard another process is fetching or
  opening; a shard already open stays readable after its deletion (POSIX keeps an unlinked
  file's data while a descriptor is open), so eviction never breaks a reader. The limit holds
  for the published files; a temporary file being written adds its one shard until it is
  published. Lock files (a line each) stay behind, one per shard ever cached.

Temporary files left by a process that died mid-fetch are deleted by the next eviction pass
(their lock is free). POSIX only (``fcntl``), as ltray's nodes are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ltray import fs
from ltray.data.manifest import ShardInfo
from ltray.errors import LtrayError
from ltray.fs import StorageOptions

_CHUNK = 8 << 20
_SUFFIX = ".parquet"


@dataclass(frozen=True)
class ShardCache:
    """Where a node keeps its shards, and how many bytes of them at most (picklable, so it
    travels to loader workers)."""

    folder: str
    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise LtrayError(f"data.cache.max_bytes must be at least 1, got {self.max_bytes}")

    def path(self, info: ShardInfo) -> Path:
        return Path(self.folder) / f"{info.sha256}{_SUFFIX}"

    def check_fits(self, shards: list[ShardInfo]) -> None:
        """One clear error when a shard alone exceeds the limit (it could never be cached)."""
        for info in shards:
            if info.bytes > self.max_bytes:
                raise LtrayError(
                    f"shard {info.path} ({info.bytes} bytes) is larger than data.cache.max_bytes "
                    f"({self.max_bytes}): raise the limit or turn the cache off"
                )

    def open(self, root: str, info: ShardInfo, storage_options: StorageOptions) -> BinaryIO:
        """A verified local copy of ``info`` (fetched from ``root`` on a miss), open for
        reading. It is opened under the shard's lock, so eviction cannot remove it between
        the check and the open."""
        os.makedirs(self.folder, exist_ok=True)
        target = self.path(info)
        lock = self._lock_path(info.sha256)
        with fs.local_lock(lock, wait=True):
            handle = self._open_verified(target, info, lock)
            if handle is None:
                self._make_room(info.bytes, keep=target)
                self._fetch(root, info, storage_options, target, lock)
                handle = self._open_verified(target, info, lock)
                assert handle is not None, "a freshly verified shard failed its check"
            os.utime(lock)  # last use, for LRU eviction
            return handle

    def _lock_path(self, sha256: str) -> Path:
        return Path(self.folder) / f"{sha256}.lock"

    def _open_verified(self, target: Path, info: ShardInfo, lock: Path) -> BinaryIO | None:
        """The cached file open for reading if it matches the manifest; None on a miss. A
        wrong size, or a wrong sha256 when it is not the file last verified, deletes it."""
        try:
            handle = open(target, "rb")  # noqa: SIM115 - returned to the caller
        except FileNotFoundError:
            return None
        identity = _identity(os.fstat(handle.fileno()))
        size = os.fstat(handle.fileno()).st_size
        problem = None
        if size != info.bytes:
            problem = f"{size} bytes, the manifest says {info.bytes}"
        elif lock.read_text() != identity:
            if fs.sha256_of_stream(handle) != info.sha256:
                problem = "sha256 differs from the manifest"
            else:
                lock.write_text(identity)
                handle.seek(0)
        if problem is None:
            return handle
        handle.close()
        warnings.warn(
            f"cached shard {info.path} in {self.folder}: {problem}; deleted, fetching it again",
            stacklevel=2,
        )
        target.unlink(missing_ok=True)
        return None

    def _fetch(
        self, root: str, info: ShardInfo, storage_options: StorageOptions, target: Path, lock: Path
    ) -> None:
        """Download to a temporary file, verify size and sha256, publish atomically."""
        url = fs.join_url(root, info.path)
        tmp = target.with_name(f".{info.sha256}.tmp-{uuid.uuid4().hex[:8]}")
        digest = hashlib.sha256()
        size = 0
        if not fs.exists(url, storage_options):
            raise info.missing_from(root)
        try:
            with fs.open_url(url, "rb", storage_options) as src, open(tmp, "wb") as dst:
                with fs.fs_errors(url, storage_options):
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
                        size += len(chunk)
            info.check_copy(size, digest.hexdigest())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        lock.write_text(_identity(target.stat()))

    def _make_room(self, incoming: int, keep: Path) -> None:
        """Delete least recently used shards (and dead temporary files) until ``incoming``
        more bytes fit under the limit, skipping any whose lock another process holds."""
        folder = Path(self.folder)
        for tmp in folder.glob(".*.tmp-*"):
            sha256 = tmp.name[1:].split(".tmp-")[0]
            with fs.local_lock(self._lock_path(sha256), wait=False) as free:
                if free:
                    tmp.unlink(missing_ok=True)
        cached = []
        for path in folder.glob(f"*{_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                last_use = self._lock_path(path.name[: -len(_SUFFIX)]).stat().st_mtime_ns
                cached.append((last_use, path.stat().st_size, path))
        total = sum(size for _, size, _ in cached)
        for _, size, path in sorted(cached):
            if total + incoming <= self.max_bytes:
                return
            if path == keep:
                continue
            with fs.local_lock(self._lock_path(path.name[: -len(_SUFFIX)]), wait=False) as free:
                if free:
                    path.unlink(missing_ok=True)
                    total -= size


def _identity(stat: os.stat_result) -> str:
    """What tells a verified cached file from another in its place (a rewrite changes mtime,
    a replacement the inode)."""
    return f"{stat.st_dev} {stat.st_ino} {stat.st_size} {stat.st_mtime_ns}"
