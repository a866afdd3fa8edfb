"""One prepare task = one shard: read its items, validate every image, resize it where the
prepare asks (:mod:`ltray.data.prepare.resize`), write the shard to the work folder
``OUT/_prepare/<split>/part-NNNNN.parquet``, then a marker ``OUT/_prepare/<split>-part-NNNNN.json``
(the shard's fingerprint, rows, bytes, sha256, class counts, bad items, image bytes before and
after). Runs in a worker process; the marker is what lets an interrupted prepare
resume, keeping exactly the shards whose images did not change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ltray import fs
from ltray.data.manifest import PROGRESS_DIR, ShardInfo
from ltray.data.prepare.image_refs import Item, read_item
from ltray.data.prepare.resize import ByteTally, Resize, resize_image
from ltray.data.shards import ShardLayout, encode_shard, sha256_hex, shard_path
from ltray.errors import LtrayError
from ltray.secrets import scrub


@dataclass
class ShardTask:
    split: str
    index: int
    items: list[Item]
    out: str
    num_classes: int
    layout: ShardLayout
    validate: str
    fingerprint: str  # of this shard: recipe, items and their content stamps
    storage_options: dict[str, Any]
    nbytes: int = 0  # estimated image bytes
    resize: Resize | None = None  # None: write the images' original bytes

    @property
    def path(self) -> str:
        return shard_path(self.split, self.index)


@dataclass
class ShardResult:
    split: str
    index: int
    info: ShardInfo
    class_counts: list[int]
    bad: list[dict[str, str]]  # {"id", "reason"}
    reused: bool = False
    image_bytes: ByteTally = field(default_factory=ByteTally)  # of the images written


_progress_queue: Any = None  # set in each worker process by the pool initializer


def init_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _report_progress(n: int) -> None:
    if _progress_queue is not None and n:
        _progress_queue.put(n)


def marker_url(out: str, split: str, index: int) -> str:
    return fs.join_url(out, PROGRESS_DIR, f"{split}-part-{index:05d}.json")


def _image_to_write(item: Item, task: ShardTask) -> tuple[bytes, bytes, str | None]:
    """(the bytes read, the bytes to write, why the image is bad or None)."""
    from ltray.data.decode import check_image  # torch: imported where an image is decoded

    data = b""
    try:
        data = read_item(item, task.storage_options)
        reason = check_image(data, task.validate)
    except Exception as exc:  # noqa: BLE001 - one bad item must not stop the prepare
        detail = scrub(str(exc), task.storage_options).strip().splitlines()
        return data, data, f"unreadable: {detail[0] if detail else type(exc).__name__}"
    if reason is not None or task.resize is None:
        return data, data, reason
    try:
        return data, resize_image(data, task.resize), None
    except ValueError as exc:
        return data, data, f"does not decode: {exc}"


def run_shard_task(task: ShardTask, report: Callable[[int], None] | None = None) -> ShardResult:
    """Read, validate (and resize) and write one shard, then its progress marker. Runs in a
    worker."""
    report = report or _report_progress
    images: list[bytes] = []
    labels: list[int] = []
    ids: list[str] = []
    bad: list[dict[str, str]] = []
    counts = [0] * task.num_classes
    tally = ByteTally()
    pending = 0
    for item in task.items:
        data, written, reason = _image_to_write(item, task)
        if reason is None:
            tally.add(data, written)
            images.append(written)
            labels.append(item.label)
            ids.append(item.id)
            counts[item.label] += 1
        else:
            bad.append({"id": item.id, "reason": reason})
        pending += 1
        if pending >= 64:
            report(pending)
            pending = 0
    report(pending)
    blob, groups = encode_shard(images, labels, ids, task.layout)
    info = ShardInfo(task.path, len(images), len(blob), sha256_hex(blob), tuple(groups))
    fs.write_bytes(fs.join_url(task.out, PROGRESS_DIR, task.path), blob, task.storage_options)
    result = ShardResult(task.split, task.index, info, counts, bad, image_bytes=tally)
    marker = {
        "fingerprint": task.fingerprint,
        "shard": info.to_json(),
        "class_counts": counts,
        "bad": bad,
        "image_bytes": tally.to_json(),
    }
    fs.write_bytes(
        marker_url(task.out, task.split, task.index),
        json.dumps(marker).encode(),
        task.storage_options,
    )
    return result


def finished_shard(task: ShardTask) -> ShardResult | None:
    """The result of a shard an earlier run finished, if its marker matches this shard and the
    file (in the work folder, or already moved into place) still agrees with the marker."""
    opts = task.storage_options
    marker_at = marker_url(task.out, task.split, task.index)
    if not fs.exists(marker_at, opts):
        return None
    try:
        marker = json.loads(fs.read_bytes(marker_at, opts))
        info = ShardInfo.from_json(marker["shard"])
        if marker["fingerprint"] != task.fingerprint or info.path != task.path:
            return None
        shard_url = fs.join_url(task.out, PROGRESS_DIR, task.path)
        if not fs.exists(shard_url, opts):
            shard_url = fs.join_url(task.out, task.path)
        if not fs.exists(shard_url, opts) or fs.file_size(shard_url, opts) != info.bytes:
            return None
        if fs.sha256_of(shard_url, opts) != info.sha256:
            return None
        counts = [int(n) for n in marker["class_counts"]]
        tally = ByteTally.from_json(marker["image_bytes"])
        bad = list(marker["bad"])
        return ShardResult(task.split, task.index, info, counts, bad, True, tally)
    except (KeyError, TypeError, ValueError, LtrayError):
        return None
