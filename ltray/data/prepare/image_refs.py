"""What a prepare writes, one row each: an Item is (id, label, where its bytes are).

Items are small and picklable so that a shard's list of them can be sent to a worker process,
which reads the bytes itself: from a file or URL, a member of an uncompressed tar (by offset,
so workers read in parallel), a CIFAR pickle array (encoded as PNG, the one case where we
encode), or a synthetic generator.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import IO

import numpy as np

from ltray import fs
from ltray.data.prepare.synthetic import SyntheticRef, render
from ltray.fs import StorageOptions


@dataclass(frozen=True)
class FileRef:
    url: str


@dataclass(frozen=True)
class TarRef:
    tar_url: str
    offset: int
    size: int


@dataclass(frozen=True)
class ArrayRef:
    """Image ``index`` of a CIFAR python pickle (rows of 3072 uint8, CHW 3x32x32)."""

    pickle_path: str
    index: int


Ref = FileRef | TarRef | ArrayRef | SyntheticRef


@dataclass(frozen=True)
class Item:
    id: str  # source path or key, unique within a split
    label: int
    ref: Ref
    size: int = 0  # bytes, when known up front (sizes the shards)
    stamp: str = ""  # size and mtime (or the store's content hash) as listed; "" if generated


def read_item(item: Item, storage_options: StorageOptions = None) -> bytes:
    """The encoded image bytes of an item (OSError / LtrayError if unreadable)."""
    ref = item.ref
    if isinstance(ref, FileRef):
        return fs.read_bytes(ref.url, storage_options)
    if isinstance(ref, TarRef):
        f = _open_tar(ref.tar_url, storage_options)
        f.seek(ref.offset)
        data = f.read(ref.size)
        if len(data) != ref.size:
            raise OSError(f"tar member cut short ({len(data)} of {ref.size} bytes)")
        return data
    if isinstance(ref, ArrayRef):
        return encode_png(cifar_pickle_images(ref.pickle_path, storage_options)[ref.index])
    if isinstance(ref, SyntheticRef):
        return render(ref)
    raise TypeError(f"unknown item reference {type(ref).__name__}")


def load_pickle(path: str, storage_options: StorageOptions = None) -> dict:
    """A CIFAR python pickle (bytes keys, latin1), as torchvision reads them."""
    with fs.open_url(path, "rb", storage_options) as f:
        return pickle.load(f, encoding="latin1")


_OPEN_TARS: dict[str, IO[bytes]] = {}
_PICKLES: dict[str, np.ndarray] = {}
_CACHE_LIMIT = 8


def _remember(cache: dict, key: str, value):
    if len(cache) >= _CACHE_LIMIT:
        old = cache.pop(next(iter(cache)))
        if hasattr(old, "close"):
            old.close()
    cache[key] = value
    return value


def _open_tar(url: str, storage_options: StorageOptions) -> IO[bytes]:
    """One open handle per tar per process: members are read by seeking, not by reopening."""
    handle = _OPEN_TARS.get(url)
    return (
        handle
        if handle is not None
        else _remember(_OPEN_TARS, url, fs.open_url(url, "rb", storage_options))
    )


def cifar_pickle_images(path: str, storage_options: StorageOptions = None) -> np.ndarray:
    """[N, 32, 32, 3] uint8 images of one pickle file, cached per worker process."""
    images = _PICKLES.get(path)
    if images is None:
        data = load_pickle(path, storage_options)
        images = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        images = _remember(_PICKLES, path, images.transpose(0, 2, 3, 1))
    return images


def encode_png(hwc: np.ndarray) -> bytes:
    """Lossless PNG of an HWC uint8 array (deterministic: same pixels, same bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(hwc)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
