"""``ltray prepare``: turn a source's items into Parquet shards and a manifest, in parallel.

One task is one shard (:mod:`ltray.data.prepare.shard_task`): a worker process reads its items'
bytes, validates every image, resizes it where asked (:mod:`ltray.data.prepare.resize`), writes
the shard (to any fsspec URL) under ``OUT/_prepare/`` and then a small marker. The data set's
fingerprint covers the recipe (source parameters, shard layout, validation, resize), every
(id, label) and every image's content stamp
(:mod:`ltray.data.prepare.fingerprint`). A re-run of an unfinished prepare with the same recipe
keeps each shard whose marker matches its items and stamps and the file's size and sha256, and
redoes the rest, so an interrupted prepare resumes and a fixed image is picked up
(:mod:`ltray.data.prepare.out_folder` decides what OUT allows). Once every shard is done the
shards move into ``OUT/<split>/``, ``manifest.json`` is written last, then ``_prepare/`` is
removed.

Bad images (unreadable, not JPEG/PNG, or not decodable) are skipped, counted and listed in
``OUT/prepare-report.json``; more than ``max_bad_fraction`` of them fails the prepare.
"""

from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from typing import Any

import numpy as np

from ltray import fs
from ltray.data.manifest import PROGRESS_DIR, Manifest, SplitInfo, write_manifest
from ltray.data.prepare.fingerprint import fingerprints, legacy_fingerprint, shard_fingerprint
from ltray.data.prepare.image_refs import FileRef, Item
from ltray.data.prepare.out_folder import (
    REPORT_NAME,
    check_out,
    check_out_location,
    move_into_place,
    remove_stray_shards,
    write_plan_marker,
)
from ltray.data.prepare.resize import ByteTally, Resize
from ltray.data.prepare.shard_task import (
    ShardResult,
    ShardTask,
    finished_shard,
    init_worker,
    run_shard_task,
)
from ltray.data.prepare.sources import SourcePlan
from ltray.data.profiles import shot_groups
from ltray.data.shards import ShardLayout, cut_by_size
from ltray.errors import LtrayError
from ltray.fs import StorageOptions
from ltray.secrets import redact_url

__all__ = ["REPORT_NAME", "PrepareOptions", "PrepareResult", "prepare", "prepare_from"]

UNKNOWN_SIZE_GUESS = 110_000  # bytes; an ImageNet JPEG, when a size cannot be read
AUTO_SERIAL_BYTES = 64 << 20
ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class PrepareOptions:
    """How to prepare (not what): these, except layout, validate and resize, do not change the
    data."""

    layout: ShardLayout = field(default_factory=ShardLayout)
    workers: int = 0  # processes; 0 = one per core
    max_bad_fraction: float = 0.01
    validate: str = "decode"  # or "header" (cheap container check)
    overwrite: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)  # for SRC and OUT
    scratch_dir: str | None = None  # where a .tar.gz is decompressed
    resize: Resize | None = None  # None: the images' original bytes, never re-encoded


@dataclass
class PrepareResult:
    manifest: Manifest
    report: dict[str, Any]
    written: int  # shards written by this run
    reused: int  # shards kept from an interrupted run
    already_done: bool = False  # OUT already held this very data set
    note: str = ""  # about an already-done data set, for the summary


# --- pure planning -------------------------------------------------------------------------


def write_order(items: list[Item], split: str, seed: int) -> list[Item]:
    """Train rows are written in a seeded random order so that every shard and row group mixes
    the classes (the reader's bounded shuffle then suffices); other splits keep source order."""
    if split != "train":
        return list(items)
    perm = np.random.default_rng([seed, zlib.crc32(b"train")]).permutation(len(items))
    return [items[i] for i in perm]


def plan_fingerprints(
    plan: SourcePlan, layout: ShardLayout, validate: str = "decode", resize: Resize | None = None
) -> dict:
    """The fingerprint of what ``plan`` writes and its parts (see
    :mod:`ltray.data.prepare.fingerprint`); ``plan`` in write order."""
    return fingerprints(plan.kind, plan.params, plan.classes, plan.splits, layout, validate, resize)


def shard_tasks(
    plan: SourcePlan,
    out: str,
    options: PrepareOptions,
    parts: dict[str, Any],
    sizes: dict[str, list[int]],
) -> list[ShardTask]:
    """Cut every split (in write order) into shard tasks by the layout's size limits."""
    tasks = []
    layout = options.layout
    for split, items in plan.splits.items():
        start = 0
        pieces = cut_by_size(sizes[split], layout.shard_rows, layout.shard_bytes)
        for index, rows in enumerate(pieces):
            mine = items[start : start + rows]
            tasks.append(
                ShardTask(
                    split,
                    index,
                    mine,
                    out,
                    len(plan.classes),
                    layout,
                    options.validate,
                    shard_fingerprint(parts, split, index, mine),
                    dict(options.storage_options),
                    sum(sizes[split][start : start + rows]),
                    options.resize,
                )
            )
            start += rows
    return tasks


def estimate_sizes(items: list[Item], storage_options: StorageOptions) -> list[int]:
    """Item sizes for shard cutting: known ones as they are, unknown ones by the mean of a
    seeded sample of up to 32 stat calls (a HEAD each on object stores, not 437k of them)."""
    unknown = [i for i, it in enumerate(items) if it.size <= 0]
    if not unknown:
        return [it.size for it in items]
    rng = np.random.default_rng(0)
    sample = rng.choice(unknown, size=min(32, len(unknown)), replace=False)
    seen = []
    for i in sample.tolist():
        ref = items[i].ref
        if isinstance(ref, FileRef):
            try:
                seen.append(fs.file_size(ref.url, storage_options))
            except LtrayError:
                pass
    guess = int(np.mean(seen)) if seen else UNKNOWN_SIZE_GUESS
    return [it.size if it.size > 0 else guess for it in items]


# --- orchestration -------------------------------------------------------------------------


def _serial_only(plan: SourcePlan, out: str, opts: StorageOptions) -> bool:
    """memory:// lives in one process: worker processes could neither read nor write it."""
    if fs.is_process_local(out, opts):
        return True
    for items in plan.splits.values():
        if (
            items
            and isinstance(items[0].ref, FileRef)
            and fs.is_process_local(items[0].ref.url, opts)
        ):
            return True
    return False


def worker_count(requested: int, tasks: list[ShardTask], nbytes: int) -> int:
    """Processes to use: ``requested``, or with 0 one per core, except that a job under
    AUTO_SERIAL_BYTES of images runs in this process (starting a worker, which imports torch,
    costs more than validating that much). Never more processes than shards."""
    if requested <= 0:
        if nbytes < AUTO_SERIAL_BYTES:
            return 1
        requested = os.cpu_count() or 1
    return max(1, min(requested, len(tasks)))


class _BadTally:
    """Counts bad images as shards finish; fails early once the limit cannot be met."""

    def __init__(self, total: int, max_fraction: float) -> None:
        self.total = total
        self.allowed = int(max_fraction * total)
        self.bad = 0

    def add(self, result: ShardResult) -> None:
        self.bad += len(result.bad)

    @property
    def exceeded(self) -> bool:
        return self.bad > self.allowed


def _run_tasks(
    tasks: list[ShardTask],
    workers: int,
    tally: _BadTally,
    progress: ProgressFn,
    total_items: int,
    done_items: int,
) -> list[ShardResult]:
    """Run the shard tasks (in this process, or in ``workers`` spawned processes) until all are
    done or too many images are bad; progress counts items."""
    done = [done_items]

    def advance(n: int) -> None:
        done[0] += n
        progress("write", done[0], total_items)

    if workers <= 1:
        results = []
        for task in tasks:
            results.append(run_shard_task(task, advance))
            tally.add(results[-1])
            if tally.exceeded:
                break
        return results
    return _run_in_processes(tasks, workers, tally, advance)


def _run_in_processes(
    tasks: list[ShardTask], workers: int, tally: _BadTally, advance: Callable[[int], None]
) -> list[ShardResult]:
    """A spawn pool (fork is unsafe once torch or s3fs threads exist); workers report progress
    through a queue that a thread here drains."""
    ctx = get_context("spawn")
    progress_queue = ctx.Queue()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set() or not progress_queue.empty():
            try:
                advance(progress_queue.get(timeout=0.1))
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=init_worker, initargs=(progress_queue,)
    )
    results: list[ShardResult] = []
    try:
        pending: set[Future] = {pool.submit(run_shard_task, task) for task in tasks}
        while pending and not tally.exceeded:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    results.append(future.result())
                except BrokenProcessPool:
                    raise LtrayError(
                        "a prepare worker process died (out of memory? killed?); "
                        "run the same command again to resume"
                    ) from None
                tally.add(results[-1])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        stop.set()
        drainer.join()
        progress_queue.close()
    return results


def _report(
    plan: SourcePlan, results: list[ShardResult], options: PrepareOptions
) -> dict[str, Any]:
    total = sum(len(items) for items in plan.splits.values())
    bad_items = [
        {"split": r.split, **b}
        for r in sorted(results, key=lambda r: (r.split, r.index))
        for b in r.bad
    ]
    per_split = {
        split: {"items": len(items), "bad": sum(1 for b in bad_items if b["split"] == split)}
        for split, items in plan.splits.items()
    }
    return {
        "total": total,
        "bad": len(bad_items),
        "bad_fraction": len(bad_items) / max(1, total),
        "max_bad_fraction": options.max_bad_fraction,
        "validate": options.validate,
        "splits": per_split,
        "bad_items": bad_items,
    }


def _resize_record(
    resize: Resize | None, plan: SourcePlan, results: list[ShardResult]
) -> dict[str, Any] | None:
    """The manifest's ``resize``: how, and per split and in all the images written, how many
    were resized and their bytes as read and as written."""
    if resize is None:
        return None
    per_split = {
        split: sum((r.image_bytes for r in results if r.split == split), ByteTally())
        for split in plan.splits
    }
    total = sum(per_split.values(), ByteTally())
    splits = {split: tally.to_json() for split, tally in per_split.items()}
    return {**resize.record(), **total.to_json(), "splits": splits}


def _build_manifest(
    plan: SourcePlan,
    results: list[ShardResult],
    parts: dict,
    resize: Resize | None = None,
    many: int = 100,
    few: int = 20,
) -> Manifest:
    splits: dict[str, SplitInfo] = {}
    for split in plan.splits:
        mine = sorted((r for r in results if r.split == split), key=lambda r: r.index)
        counts = (
            [sum(col) for col in zip(*(r.class_counts for r in mine), strict=True)] if mine else []
        )
        splits[split] = SplitInfo(counts or [0] * len(plan.classes), [r.info for r in mine])
    train_counts = splits["train"].class_counts
    empty = [plan.classes[i] for i, n in enumerate(train_counts) if n == 0]
    if empty:
        raise LtrayError(f"class {empty[0]!r} has no readable train image left (see {REPORT_NAME})")
    groups = shot_groups(train_counts, many, few)
    profile = dict(plan.profile)
    requested = plan.profile.get("imbalance")
    actual = max(train_counts) / min(train_counts)
    profile.update(
        {
            "n_max": max(train_counts),  # as written: skipped images do not count
            "imbalance_requested": requested if plan.profile.get("name") != "given" else None,
            "imbalance_actual": actual,
            "many_threshold": many,
            "few_threshold": few,
            "per_class": [
                {"label": i, "name": name, "train_count": n, "group": g}
                for i, (name, n, g) in enumerate(
                    zip(plan.classes, train_counts, groups, strict=True)
                )
            ],
        }
    )
    if plan.profile.get("n_max") not in (None, profile["n_max"]):
        profile["n_max_requested"] = plan.profile["n_max"]
    warnings = []
    carve = plan.val_carve
    if carve is not None:
        profile["val_split"] = carve.record()
        for entry, spare, kept in zip(
            profile["per_class"], carve.from_left_out, carve.from_kept, strict=True
        ):
            entry.update({"val_from_left_out": spare, "val_from_kept": kept})
        warnings += [w for w in [carve.warning(plan.classes)] if w]
    source = {"kind": plan.kind, **plan.params, **plan.origin}
    warnings += _profile_warnings(plan, train_counts)
    recorded = {k: v for k, v in parts.items() if k != "fingerprint"}
    manifest = Manifest(list(plan.classes), splits, profile, source, parts["fingerprint"])
    manifest.fingerprints, manifest.warnings = recorded, warnings
    manifest.resize = _resize_record(resize, plan, results)
    return manifest


def _profile_warnings(plan: SourcePlan, written: list[int]) -> list[str]:
    """Where skipped bad images moved the train counts away from the planned profile."""
    planned = [0] * len(plan.classes)
    for item in plan.splits["train"]:
        planned[item.label] += 1
    if planned == written:
        return []
    short = [
        f"{plan.classes[c]!r} {have} of {want}"
        for c, (want, have) in enumerate(zip(planned, written, strict=True))
        if have != want
    ]
    more = f" and {len(short) - 3} more" if len(short) > 3 else ""
    text = (
        f"bad images left {len(short)} class(es) short of the planned train counts "
        f"({', '.join(short[:3])}{more})"
    )
    if max(written) * min(planned) != max(planned) * min(written):  # the IFs, exactly
        planned_if, written_if = max(planned) / min(planned), max(written) / min(written)
        text += f": imbalance {written_if:.4g} instead of {planned_if:.4g}"
    return [text]


def _already_done(manifest: Manifest, out: str, opts: StorageOptions) -> PrepareResult:
    report_url = fs.join_url(out, REPORT_NAME)
    report = json.loads(fs.read_bytes(report_url, opts)) if fs.exists(report_url, opts) else {}
    note = (
        ""
        if manifest.fingerprints
        else "an older ltray prepared it without fingerprinting image contents: pass "
        "--overwrite to re-read images changed since"
    )
    return PrepareResult(manifest, report, 0, 0, already_done=True, note=note)


def _split_finished(
    tasks: list[ShardTask], progress: ProgressFn
) -> tuple[list[ShardResult], list[ShardTask]]:
    """(results of shards an earlier run finished, tasks still to do)."""
    results, todo = [], []
    for i, task in enumerate(tasks):
        progress("check", i, len(tasks))
        found = finished_shard(task)
        if found is None:
            todo.append(task)
        else:
            results.append(found)
    return results, todo


def prepare(
    plan: SourcePlan,
    out: str,
    options: PrepareOptions | None = None,
    progress: ProgressFn | None = None,
) -> PrepareResult:
    """Write ``plan`` to ``out`` as shards + manifest (see the module docstring)."""
    options = options or PrepareOptions()
    progress = progress or (lambda phase, done, total: None)
    opts = options.storage_options
    if not 0.0 <= options.max_bad_fraction <= 1.0:
        raise LtrayError(f"--max-bad-fraction must be in [0, 1], got {options.max_bad_fraction}")
    seed = int(plan.profile.get("seed", 0))
    plan = replace(plan, splits={s: write_order(i, s, seed) for s, i in plan.splits.items()})
    check_out_location(out, plan.roots, opts)
    parts = plan_fingerprints(plan, options.layout, options.validate, options.resize)
    legacy = legacy_fingerprint(
        plan.kind,
        plan.params,
        plan.classes,
        plan.splits,
        options.layout,
        options.validate,
        options.resize,
    )
    existing = check_out(out, parts, list(plan.splits), options.overwrite, opts, legacy)
    if existing is not None:
        return _already_done(existing, out, opts)
    write_plan_marker(out, parts, opts)
    sizes = {split: estimate_sizes(items, opts) for split, items in plan.splits.items()}
    tasks = shard_tasks(plan, out, options, parts, sizes)
    results, todo = _split_finished(tasks, progress)
    total_items = sum(len(t.items) for t in tasks)
    tally = _BadTally(total_items, options.max_bad_fraction)
    for result in results:
        tally.add(result)
    done_items = total_items - sum(len(t.items) for t in todo)
    progress("write", done_items, total_items)
    serial = _serial_only(plan, out, opts)
    workers = 1 if serial else worker_count(options.workers, todo, sum(t.nbytes for t in todo))
    if not tally.exceeded:
        results += _run_tasks(todo, workers, tally, progress, total_items, done_items)
    report = _report(plan, results, options)
    report_url = fs.join_url(out, REPORT_NAME)
    fs.write_bytes(report_url, (json.dumps(report, indent=1) + "\n").encode(), opts)
    if tally.exceeded:
        error = LtrayError(
            f"{tally.bad} of {total_items} images are bad (more than --max-bad-fraction "
            f"{options.max_bad_fraction:g}); see {redact_url(report_url)}"
        )
        error.report = report  # the CLI lists the bad images
        raise error
    manifest = _build_manifest(plan, results, parts, options.resize)
    paths = [r.info.path for r in results]
    move_into_place(out, paths, opts)
    remove_stray_shards(out, list(plan.splits), paths, opts)
    write_manifest(manifest, out, opts)  # last: from now on OUT is a data set
    fs.remove(fs.join_url(out, PROGRESS_DIR), opts, recursive=True)
    manifest.url = out
    reused = sum(1 for r in results if r.reused)
    return PrepareResult(manifest, report, len(results) - reused, reused)


def prepare_from(
    make_plan: Callable[[str], SourcePlan],
    out: str,
    options: PrepareOptions | None = None,
    progress: ProgressFn | None = None,
) -> PrepareResult:
    """List a source (given a scratch folder for decompressed archives), then prepare it."""
    options = options or PrepareOptions()
    with tempfile.TemporaryDirectory(prefix="ltray-prepare-", dir=options.scratch_dir) as scratch:
        plan = make_plan(scratch)
        return prepare(plan, out, options, progress)
