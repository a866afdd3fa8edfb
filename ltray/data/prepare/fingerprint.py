"""What identifies a prepared data set, in parts, so that a re-run can tell what changed.

- the **recipe**: source kind and parameters, shard layout, validation mode, the resize (only
  when one is asked for, so data sets prepared before it keep their fingerprint), the class
  names;
- per split, the **items**: every (label, id) in write order;
- per split, the **contents**: every item's stamp (size and modification time, or the content
  hash an object store keeps, as the source listing found them).

The fingerprint of the whole is a sha256 over all three; the manifest and the unfinished
prepare's ``plan.json`` keep the parts too, so a refusal can say which one differs. A shard's
own fingerprint covers the recipe and its items with their stamps, so a resumed prepare redoes
exactly the shards whose images changed. Where the source lives is not part of any of them
(moving SRC does not make it another data set).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from ltray import fs
from ltray.data.manifest import VERSION
from ltray.data.prepare.image_refs import Item
from ltray.data.prepare.resize import Resize
from ltray.data.shards import ShardLayout
from ltray.fs import StorageOptions

MISSING = "missing"
_HASH_KEYS = ("ETag", "etag", "md5Hash", "md5", "crc32c")
_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")


def content_stamp(info: Mapping[str, Any]) -> str:
    """An fsspec ``info`` dict -> 'size:hash' where the store keeps a content hash (S3's
    ETag, GCS's md5), else 'size:mtime'."""
    size = info.get("size")
    for key in _HASH_KEYS:
        if info.get(key):
            return f"{size}:{key}={str(info[key]).strip(chr(34))}"
    for key in _TIME_KEYS:
        if info.get(key) is not None:
            return f"{size}:{info[key]}"
    return str(size)


def stat_files(
    urls: Iterable[str], storage_options: StorageOptions = None
) -> dict[str, tuple[str, int]]:
    """url -> (stamp, size) for files named one by one (list and annotation files), by listing
    each parent folder once rather than asking about every file; a missing file gets
    (MISSING, 0) and is then reported as unreadable by the prepare, like any bad image."""
    by_parent: dict[str, list[str]] = {}
    for url in urls:
        by_parent.setdefault(posixpath.dirname(url), []).append(url)
    out: dict[str, tuple[str, int]] = {}
    for parent, members in by_parent.items():
        filesystem, path = fs.get_fs(parent, storage_options)
        with fs.fs_errors(parent, storage_options):
            try:
                listing = filesystem.ls(path, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                listing = []
        infos = {posixpath.basename(str(i["name"]).rstrip("/")): i for i in listing}
        for url in members:
            info = infos.get(posixpath.basename(url))
            if info is None or info.get("type") == "directory":
                out[url] = (MISSING, 0)
            else:
                out[url] = (content_stamp(info), int(info.get("size") or 0))
    return out


def _sha(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def _head(
    kind: str, params: dict[str, Any], layout: ShardLayout, validate: str, resize: Resize | None
) -> dict[str, Any]:
    head = {"version": VERSION, "kind": kind, "params": params, "layout": asdict(layout)}
    head["validate"] = validate
    if resize is not None:
        head["resize"] = resize.record()
    return head


def recipe(
    kind: str,
    params: dict[str, Any],
    layout: ShardLayout,
    validate: str,
    resize: Resize | None = None,
) -> dict:
    """The JSON-able parameters that define a data set besides its items."""
    head = _head(kind, params, layout, validate, resize)
    return json.loads(json.dumps(head, sort_keys=True, default=str))


def split_digests(items: list[Item]) -> dict[str, Any]:
    """{"images", "items" (sha256 of every (label, id)), "contents" (of every stamp)}."""
    ids = hashlib.sha256()
    stamps = hashlib.sha256()
    for item in items:
        ids.update(f"{item.label}\t{item.id}\n".encode())
        stamps.update(f"{item.stamp}\n".encode())
    return {"images": len(items), "items": ids.hexdigest(), "contents": stamps.hexdigest()}


def fingerprints(
    kind: str,
    params: dict[str, Any],
    classes: list[str],
    splits: dict[str, list[Item]],
    layout: ShardLayout,
    validate: str,
    resize: Resize | None = None,
) -> dict[str, Any]:
    """The parts (see the module docstring) and ``fingerprint``, a sha256 over them."""
    parts = {
        "recipe": recipe(kind, params, layout, validate, resize),
        "classes": _sha(json.dumps(classes)),
        "splits": {split: split_digests(items) for split, items in splits.items()},
    }
    return {"fingerprint": _sha(json.dumps(parts, sort_keys=True)), **parts}


def same_recipe(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Same recipe and classes: only the items or their contents may differ."""
    return old.get("recipe") == new["recipe"] and old.get("classes") == new["classes"]


def shard_fingerprint(parts: Mapping[str, Any], split: str, index: int, items: list[Item]) -> str:
    """What one shard is made of: the recipe, the classes, and its items with their stamps."""
    digest = hashlib.sha256()
    head = {"recipe": parts["recipe"], "classes": parts["classes"], "shard": [split, index]}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for item in items:
        digest.update(f"\n{item.label}\t{item.id}\t{item.stamp}".encode())
    return digest.hexdigest()


def legacy_fingerprint(
    kind: str,
    params: dict[str, Any],
    classes: list[str],
    splits: dict[str, list[Item]],
    layout: ShardLayout,
    validate: str,
    resize: Resize | None = None,
) -> str:
    """The fingerprint of manifests written before contents were fingerprinted (recipe and
    every (id, label), no stamps): lets a re-run recognise a data set an older ltray wrote
    (never as a resized one: those are newer)."""
    digest = hashlib.sha256()
    head = _head(kind, params, layout, validate, resize)
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    digest.update(json.dumps(classes).encode())
    for split, items in splits.items():
        digest.update(f"\n[{split}]".encode())
        for item in items:
            digest.update(f"\n{item.label}\t{item.id}".encode())
    return digest.hexdigest()


def _changes(old: Any, new: Any, prefix: str) -> list[str]:
    """'key: old -> new' for every leaf that differs between two JSON objects."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old == new:
        return []
    return [f"{prefix.rstrip('.')} {_show(old)} -> {_show(new)}"]


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


def _resize_text(recipe_of: Mapping[str, Any]) -> str:
    resize = recipe_of.get("resize")
    if not resize:
        return "none, original bytes"
    return f"shorter side {resize.get('shorter')} px, JPEG quality {resize.get('jpeg_quality')}"


def describe_difference(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What differs between two sets of fingerprints, in words, for a refusal message."""
    if not old or "recipe" not in old:
        return "an older ltray wrote it, without recording how"
    old_recipe, new_recipe = old.get("recipe") or {}, new["recipe"]
    if old_recipe.get("kind") != new_recipe["kind"]:
        return f"source {old_recipe.get('kind')} -> {new_recipe['kind']}"
    old_resize, new_resize = _resize_text(old_recipe), _resize_text(new_recipe)
    if old_resize != new_resize:
        return f"resize differs ({old_resize} -> {new_resize})"
    changes = _changes(old_recipe, new_recipe, "")
    if changes:
        shown = ", ".join(c.removeprefix("params.") for c in changes[:4])
        more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
        return f"options differ ({shown}{more})"
    if old.get("classes") != new["classes"]:
        return "the class names differ"
    old_splits, new_splits = old.get("splits") or {}, new["splits"]
    if set(old_splits) != set(new_splits):
        return f"splits {', '.join(old_splits) or 'none'} -> {', '.join(new_splits)}"
    for split, now in new_splits.items():
        then = old_splits[split]
        if then.get("items") != now["items"]:
            return (
                f"the {split} split lists other images ({now['images']:,} now, "
                f"{then.get('images', 0):,} then)"
            )
    for split, now in new_splits.items():
        if old_splits[split].get("contents") != now["contents"]:
            return (
                f"images of the {split} split changed since (size or modification time; "
                "a fixed or replaced image?)"
            )
    return "nothing that ltray records"
