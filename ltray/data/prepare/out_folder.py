"""What OUT already holds, and what a prepare may do with it.

- this very data set (manifest with the same fingerprint): nothing to do;
- an unfinished prepare of it (``_prepare/plan.json`` with the same fingerprint): resume;
- another data set, another unfinished prepare, or unrelated files: refuse, unless
  ``overwrite``, which removes ltray's own files only (manifest first, so that a half-cleared
  OUT is never taken for a whole data set).
"""

from __future__ import annotations

import json

from ltray import fs
from ltray.data.manifest import MANIFEST_NAME, PROGRESS_DIR, Manifest, read_manifest
from ltray.errors import LtrayError
from ltray.fs import StorageOptions
from ltray.secrets import redact_url

REPORT_NAME = "prepare-report.json"
PLAN_MARKER = "plan.json"


def plan_marker_url(out: str) -> str:
    return fs.join_url(out, PROGRESS_DIR, PLAN_MARKER)


def write_plan_marker(out: str, fingerprint: str, storage_options: StorageOptions) -> None:
    """Claim OUT for this prepare before writing any shard."""
    payload = json.dumps({"fingerprint": fingerprint}).encode()
    fs.write_bytes(plan_marker_url(out), payload, storage_options)


def clear_outputs(out: str, opts: StorageOptions, splits: list[str]) -> None:
    """Remove what ltray wrote to OUT (manifest first); other files are left alone."""
    fs.remove(fs.join_url(out, MANIFEST_NAME), opts)
    fs.remove(fs.join_url(out, REPORT_NAME), opts)
    fs.remove(fs.join_url(out, PROGRESS_DIR), opts, recursive=True)
    filesystem, root = fs.get_fs(out, opts)
    for split in splits:
        with fs.fs_errors(out, opts):
            for path in filesystem.glob(f"{root.rstrip('/')}/{split}/part-*.parquet"):
                filesystem.rm(path)


def check_out(
    out: str, fp: str, splits: list[str], overwrite: bool, opts: StorageOptions
) -> Manifest | None:
    """Decide what to do with OUT: the finished manifest if it already holds this data set,
    else None after making OUT ready (refusing a different data set unless overwrite)."""
    shown = redact_url(out)
    splits = sorted(set(splits) | {"train", "val", "test"})
    if fs.exists(fs.join_url(out, MANIFEST_NAME), opts):
        try:
            existing: Manifest | None = read_manifest(out, opts)
        except LtrayError:
            existing = None
        if existing is not None and existing.fingerprint == fp and not overwrite:
            return existing
        if not overwrite:
            raise LtrayError(
                f"{shown} already holds a different data set; pass --overwrite to replace it"
            )
        splits = sorted(set(splits) | set(existing.split_names if existing else []))
        clear_outputs(out, opts, splits)
        return None
    marker = plan_marker_url(out)
    if fs.exists(marker, opts):
        try:
            same = json.loads(fs.read_bytes(marker, opts)).get("fingerprint") == fp
        except (ValueError, AttributeError):
            same = False
        if same and not overwrite:
            return None  # resume
        if not overwrite:
            raise LtrayError(
                f"{shown} holds an unfinished prepare of a different data set; "
                "pass --overwrite to replace it"
            )
        clear_outputs(out, opts, splits)
    elif fs.list_names(out, opts):
        if not overwrite:
            raise LtrayError(
                f"{shown} is not empty and holds no ltray data set; choose an empty or new "
                "folder, or pass --overwrite (only ltray's own files are replaced)"
            )
        clear_outputs(out, opts, splits)
    return None
