"""fsspec URL helpers: one way to open, list and write a path or URL (file://, s3://, memory://).

Credentials travel in ``storage_options`` (an ``s3://KEY:SECRET@`` URL's userinfo becomes
two of them, see :func:`credentials_from_url`). Every message built here passes through
:func:`scrub`, which removes secret values and ``user:password@`` parts of URLs, so an error
never prints a key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from ltray.errors import LtrayError
from ltray.secrets import redact_url, scrub, strip_userinfo, url_credentials

StorageOptions = Mapping[str, Any] | None

_CHUNK = 1 << 20


def join_url(base: str, *parts: str) -> str:
    """``base/part/...`` for paths and URLs alike (no normalisation of the base)."""
    out = str(base).rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


_USERINFO_AS_OPTIONS = {"s3": ("key", "secret"), "s3a": ("key", "secret")}


def credentials_from_url(url: str, storage_options: StorageOptions) -> tuple[str, dict[str, Any]]:
    """``s3://KEY:SECRET@bucket/path`` -> (``s3://bucket/path``, options with key and secret):
    s3fs takes credentials only as options and would read the userinfo as part of the bucket.
    Options given explicitly win over the URL's. Other schemes keep their userinfo (ftp, sftp
    and http read it themselves)."""
    options = dict(storage_options or {})
    names = _USERINFO_AS_OPTIONS.get(str(url).partition("://")[0].lower())
    user, password = url_credentials(url)
    if names is None or (user is None and password is None):
        return str(url), options
    for name, value in zip(names, (user, password), strict=True):
        if value is not None:
            options.setdefault(name, value)
    return strip_userinfo(url), options


def get_fs(url: str, storage_options: StorageOptions = None) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path for ``url``."""
    url, options = credentials_from_url(url, storage_options)
    try:
        return fsspec.core.url_to_fs(str(url), **options)
    except ImportError as exc:
        raise LtrayError(
            f"{redact_url(url)}: this URL scheme needs an extra package ({exc.name or exc})"
        ) from None
    except (ValueError, TypeError) as exc:  # unknown protocol, bad storage options
        raise LtrayError(f"{redact_url(url)}: {scrub(str(exc), options)}") from None


def is_local(fs: AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def is_process_local(url: str, storage_options: StorageOptions = None) -> bool:
    """True for filesystems that other processes cannot see (memory://)."""
    fs, _ = get_fs(url, storage_options)
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "memory" in protocols


@contextlib.contextmanager
def fs_errors(what: str, storage_options: StorageOptions = None) -> Iterator[None]:
    """Turn filesystem exceptions inside the block into one-line LtrayErrors about ``what``."""
    try:
        yield
    except LtrayError:
        raise
    except FileNotFoundError:
        raise LtrayError(f"{scrub(what, storage_options)}: not found") from None
    except PermissionError as exc:
        detail = scrub(str(exc), storage_options)
        raise LtrayError(f"{scrub(what, storage_options)}: permission denied ({detail})") from None
    except IsADirectoryError:
        raise LtrayError(f"{scrub(what, storage_options)}: is a directory, not a file") from None
    except OSError as exc:
        detail = scrub(exc.strerror or str(exc), storage_options)
        raise LtrayError(f"{scrub(what, storage_options)}: {_first_line(detail)}") from None
    except Exception as exc:  # noqa: BLE001 - botocore, gcsfs, bad storage options, ...
        detail = _first_line(scrub(str(exc), storage_options))
        raise LtrayError(
            f"{scrub(what, storage_options)}: {type(exc).__name__}: {detail}"
        ) from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def open_url(url: str, mode: str = "rb", storage_options: StorageOptions = None, **kwargs: Any):
    """Open a path or URL with fsspec; a missing or unreadable file raises LtrayError."""
    fs, path = get_fs(url, storage_options)
    with fs_errors(url, storage_options):
        return fs.open(path, mode, **kwargs)


class RangeFile(io.RawIOBase):
    """A read-only file of known size whose every read is one ranged request (fsspec's
    ``cat_file(start, end)``): opening it asks the store nothing, and instances are cheap, so
    each reader thread can have its own. (An fsspec file asks the store for the object's
    details on open, and buffers past each read.)"""

    def __init__(self, url: str, size: int, storage_options: StorageOptions = None) -> None:
        super().__init__()
        self.url = url
        self.size = size
        self.storage_options = storage_options
        self._fs, self._path = get_fs(url, storage_options)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        if self._pos >= end:
            return b""
        with fs_errors(self.url, self.storage_options):
            data = self._fs.cat_file(self._path, start=self._pos, end=end)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def read_bytes(url: str, storage_options: StorageOptions = None) -> bytes:
    fs, path = get_fs(url, storage_options)
    with fs_errors(url, storage_options):
        return fs.cat_file(path)


def write_bytes(url: str, data: bytes, storage_options: StorageOptions = None) -> None:
    """Write a whole file so that readers never see half of it.

    Local files go to a temporary name and are renamed into place (atomic on POSIX); on object
    stores a single PUT is already all-or-nothing.
    """
    fs, path = get_fs(url, storage_options)
    with fs_errors(url, storage_options):
        if is_local(fs):
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            fs.pipe_file(path, data)


def exists(url: str, storage_options: StorageOptions = None) -> bool:
    fs, path = get_fs(url, storage_options)
    with fs_errors(url, storage_options):
        return fs.exists(path)


def file_size(url: str, storage_options: StorageOptions = None) -> int:
    fs, path = get_fs(url, storage_options)
    with fs_errors(url, storage_options):
        return int(fs.size(path))


def sha256_of(url: str, storage_options: StorageOptions = None) -> str:
    """sha256 of a file, streamed in 1 MiB chunks."""
    with open_url(url, "rb", storage_options) as f, fs_errors(url, storage_options):
        return sha256_of_stream(f)


def sha256_of_stream(f: IO[bytes]) -> str:
    """sha256 of what is left to read of an open file, in 1 MiB chunks."""
    digest = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def list_names(url: str, storage_options: StorageOptions = None) -> list[str]:
    """Base names directly under a directory URL; [] if it does not exist."""
    fs, path = get_fs(url, storage_options)
    with fs_errors(url, storage_options):
        if not fs.exists(path):
            return []
        return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def remove(url: str, storage_options: StorageOptions = None, recursive: bool = False) -> None:
    """Delete a file (or a tree when recursive); a missing one is not an error."""
    fs, path = get_fs(url, storage_options)
    with fs_errors(url, storage_options):
        if fs.exists(path):
            fs.rm(path, recursive=recursive)


def local_path(url: str, storage_options: StorageOptions = None) -> str | None:
    """The OS path of a local URL, or None for remote ones."""
    fs, path = get_fs(url, storage_options)
    return path if is_local(fs) else None


@contextlib.contextmanager
def local_lock(path: str | os.PathLike[str], wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on the local file ``path`` (made if missing) for the block;
    yields False when ``wait`` is False and another holder has it. POSIX only (``fcntl``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock
