"""Run storage on any fsspec URL: checkpoints and the writability probe.

A thin folder view over :mod:`ltray.fs`, which already scrubs credentials from errors and
writes files atomically.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from ltray import fs
from ltray.errors import LtrayError
from ltray.secrets import redact_url


class Storage:
    """A folder on any fsspec URL; paths given to its methods are relative to it."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(storage_options or {})

    def url_of(self, relative: str) -> str:
        return fs.join_url(self.url, relative) if relative else self.url

    def list(self, relative: str) -> list[str]:
        return fs.list_names(self.url_of(relative), self.options)

    def exists(self, relative: str) -> bool:
        return fs.exists(self.url_of(relative), self.options)

    def read_bytes(self, relative: str) -> bytes:
        return fs.read_bytes(self.url_of(relative), self.options)

    def write_bytes(self, relative: str, data: bytes) -> None:
        target = self.url_of(relative)
        filesystem, path = fs.get_fs(target, self.options)
        if fs.is_local(filesystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fs.write_bytes(target, data, self.options)

    def remove(self, relative: str) -> None:
        fs.remove(self.url_of(relative), self.options, recursive=True)

    def check_writable(self) -> None:
        """Fail before training starts, naming the URL, if checkpoints cannot be written."""
        probe = f".ltray-write-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.write_bytes(probe, b"ok")
            self.remove(probe)
        except LtrayError as exc:
            raise LtrayError(f"storage {redact_url(self.url)} is not writable: {exc}") from None
        except OSError as exc:
            raise LtrayError(
                f"storage {redact_url(self.url)} is not writable: {exc.strerror or exc}"
            ) from None

    def pyarrow_filesystem(self) -> tuple[str, Any]:
        """(path, filesystem) for Ray's RunConfig: local paths as they are, anything else
        through pyarrow's wrapper of the same fsspec filesystem (endpoint and credentials kept)."""
        filesystem, path = fs.get_fs(self.url, self.options)
        if fs.is_local(filesystem):
            return os.path.abspath(path), None
        import pyarrow.fs

        return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(filesystem))
