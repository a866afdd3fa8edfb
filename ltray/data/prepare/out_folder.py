"""What OUT already holds, and what a prepare may do with it.

- this very data set (manifest with the same fingerprint): nothing to do;
- an unfinished prepare with the same recipe (``_prepare/plan.json``): resume it, even if
  images were fixed, replaced or removed since (the shards they touch are redone);
- another data set (images changed since included), another unfinished prepare, or unrelated
  files: refuse, saying what differs, unless ``overwrite``, which removes ltray's own files only
  (manifest first, so that a half-cleared OUT is never taken for a whole data set);
- a file, or a folder inside a source tree the prepare lists: refuse.

Shards are written under ``OUT/_prepare/`` and moved into ``OUT/<split>/`` only once every
shard is done and the prepare has not failed, just before the manifest.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ltray import fs
from ltray.data.manifest import MANIFEST_NAME, PROGRESS_DIR, Manifest, read_manifest
from ltray.data.prepare.fingerprint import describe_difference, same_recipe
from ltray.errors import LtrayError
from ltray.fs import StorageOptions
from ltray.secrets import redact_url

REPORT_NAME = "prepare-report.json"
PLAN_MARKER = "plan.json"


def plan_marker_url(out: str) -> str:
    return fs.join_url(out, PROGRESS_DIR, PLAN_MARKER)


def write_plan_marker(out: str, parts: dict[str, Any], storage_options: StorageOptions) -> None:
    """Claim OUT for this prepare before writing any shard (the fingerprint and its parts)."""
    payload = json.dumps(parts, sort_keys=True).encode()
    fs.write_bytes(plan_marker_url(out), payload, storage_options)


def move_into_place(out: str, paths: list[str], opts: StorageOptions) -> None:
    """Move finished shards from the work folder to ``OUT/<split>/`` (a rename where the
    filesystem has them); a shard already there (a killed earlier move) is left as it is."""
    filesystem, root = fs.get_fs(out, opts)
    root = root.rstrip("/")
    with fs.fs_errors(out, opts):
        for path in paths:
            source, target = f"{root}/{PROGRESS_DIR}/{path}", f"{root}/{path}"
            if not filesystem.exists(source):
                continue
            if fs.is_local(filesystem):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(source, target)
            else:
                filesystem.mv(source, target)


def remove_stray_shards(out: str, splits: list[str], keep: list[str], opts: StorageOptions) -> None:
    """Delete ``OUT/<split>/part-*.parquet`` files the new manifest will not list: shards an
    earlier, killed run of this prepare had moved into place before its images changed."""
    filesystem, root = fs.get_fs(out, opts)
    root = root.rstrip("/")
    wanted = {f"{root}/{path}" for path in keep}
    with fs.fs_errors(out, opts):
        for split in splits:
            for path in filesystem.glob(f"{root}/{split}/part-*.parquet"):
                if path.rstrip("/") not in wanted:
                    filesystem.rm(path)


def _inside(child: str, parent: str, opts: StorageOptions) -> bool:
    """Whether ``child`` is ``parent`` or lies below it (same filesystem, resolved paths)."""
    child_fs, child_path = fs.get_fs(child, opts)
    parent_fs, parent_path = fs.get_fs(parent, opts)
    if type(child_fs) is not type(parent_fs):
        return False
    if fs.is_local(child_fs):
        child_path, parent_path = os.path.realpath(child_path), os.path.realpath(parent_path)
    child_path, parent_path = child_path.rstrip("/"), parent_path.rstrip("/")
    return child_path == parent_path or child_path.startswith(parent_path + "/")


def check_out_location(out: str, roots: list[str], opts: StorageOptions) -> None:
    """OUT must be a folder (or not exist yet), outside every source tree the prepare lists:
    inside one, the next run would list the data set's own files as images."""
    shown = redact_url(out)
    for root in roots:
        if _inside(out, root, opts):
            raise LtrayError(
                f"{shown} is inside the source {redact_url(root)}: the next prepare would list "
                "its files as images; choose an OUT outside SRC"
            )
    filesystem, path = fs.get_fs(out, opts)
    with fs.fs_errors(out, opts):
        if filesystem.isfile(path):
            raise LtrayError(
                f"{shown} is a file, not a folder: choose a new or empty folder for the data set"
            )


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
    out: str,
    parts: dict[str, Any],
    splits: list[str],
    overwrite: bool,
    opts: StorageOptions,
    legacy_fingerprint: str = "",
) -> Manifest | None:
    """Decide what to do with OUT: the finished manifest if it already holds this data set,
    else None after making OUT ready (refusing a different data set unless overwrite).

    ``parts`` are this prepare's fingerprints (ltray.data.prepare.fingerprint.fingerprints); a
    manifest an older ltray wrote has no parts and matches on ``legacy_fingerprint``."""
    shown = redact_url(out)
    fp = parts["fingerprint"]
    splits = sorted(set(splits) | {"train", "val", "test"})
    if fs.exists(fs.join_url(out, MANIFEST_NAME), opts):
        try:
            existing: Manifest | None = read_manifest(out, opts)
        except LtrayError:
            existing = None
        if existing is not None and not overwrite:
            old_style = not existing.fingerprints and existing.fingerprint == legacy_fingerprint
            if existing.fingerprint == fp or old_style:
                return existing
        if not overwrite:
            what = (
                describe_difference(existing.fingerprints, parts)
                if existing is not None
                else f"its {MANIFEST_NAME} does not read"
            )
            raise LtrayError(
                f"{shown} already holds a different data set: {what}; "
                "pass --overwrite to replace it"
            )
        splits = sorted(set(splits) | set(existing.split_names if existing else []))
        clear_outputs(out, opts, splits)
        return None
    marker = plan_marker_url(out)
    if fs.exists(marker, opts):
        try:
            started = json.loads(fs.read_bytes(marker, opts))
        except ValueError:
            started = None
        started = started if isinstance(started, dict) else {}
        if not overwrite and (started.get("fingerprint") == fp or same_recipe(started, parts)):
            return None  # resume; shards whose images changed are redone
        if not overwrite:
            raise LtrayError(
                f"{shown} holds an unfinished prepare of a different data set: "
                f"{describe_difference(started, parts)}; pass --overwrite to replace it"
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
