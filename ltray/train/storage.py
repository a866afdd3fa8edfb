"""Run storage on any fsspec URL: checkpoints, the resolved config, the writability probe."""

from __future__ import annotations

import os
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ltray.errors import LtrayError


class Storage:
    """A folder on any fsspec URL; paths given to its methods are relative to it."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def list(self, relative: str) -> list[str]:
        try:
            entries = self.fs.ls(self.path(relative), detail=False)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(e.rstrip("/")) for e in entries)

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write so a reader never sees half a file: temp name + rename locally; object stores
        make an object visible only once its upload completes."""
        target = self.path(relative)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.is_local:
            temp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            self.fs.pipe_file(temp, data)
            os.replace(temp, target)
        else:
            self.fs.pipe_file(target, data)

    def remove(self, relative: str) -> None:
        self.fs.rm(self.path(relative), recursive=True)

    def check_writable(self) -> None:
        """Fail before training starts, naming the URL, if checkpoints cannot be written."""
        probe = f".ltray-write-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.write_bytes(probe, b"ok")
            self.remove(probe)
        except Exception as exc:  # any backend error means the same thing to the user
            raise LtrayError(
                f"storage {self.url} is not writable: {type(exc).__name__}: {exc}"
            ) from None

    def pyarrow_filesystem(self):
        """(path, filesystem) for Ray's RunConfig: local paths as they are, anything else
        through pyarrow's wrapper of the same fsspec filesystem (endpoint and credentials kept)."""
        if self.is_local:
            return os.path.abspath(self.root), None
        import pyarrow.fs

        return self.root, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(self.fs))
