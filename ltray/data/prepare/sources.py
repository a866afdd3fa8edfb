"""Sources of ``ltray prepare``: each lists its items and picks the long-tailed subset.

A source returns a :class:`SourcePlan` (classes in label order, each split's items, the
profile, and the parameters that define the data set); it reads no image bytes. The worker
processes of :mod:`ltray.data.prepare.orchestrator` read, validate and write them. Here: image
folders, CIFAR (archive, folder or pickles) and the synthetic set; ImageNet-LT and iNaturalist,
which come with list and annotation files, are in :mod:`ltray.data.prepare.list_sources`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ltray import fs
from ltray.data.prepare.class_trees import ClassTree, list_tree, split_classes
from ltray.data.prepare.fingerprint import content_stamp
from ltray.data.prepare.image_refs import ArrayRef, Item, load_pickle
from ltray.data.prepare.synthetic import FORMATS, SyntheticRef
from ltray.data.prepare.val_split import ValCarve, carve_val_per_class, check_val_per_class
from ltray.data.profiles import check_imbalance, long_tail_counts, smallest_imbalance
from ltray.errors import LtrayError
from ltray.fs import StorageOptions
from ltray.secrets import redact_url

CIFAR = {"cifar10": (10, 5000), "cifar100": (100, 500)}


@dataclass
class SourcePlan:
    """What a prepare will write: every split's items (train already long-tailed)."""

    kind: str
    classes: list[str]
    splits: dict[str, list[Item]]
    profile: dict[str, Any]  # name, imbalance, n_max, seed (the request; counts come later)
    params: dict[str, Any] = field(default_factory=dict)  # defines the data set; no secrets
    origin: dict[str, Any] = field(default_factory=dict)  # where it was read (redacted URLs)
    roots: list[str] = field(default_factory=list)  # folders listed as trees (OUT must not be in)
    val_carve: ValCarve | None = None  # where --val-per-class took val from


def flatten(per_class: list[list[Item]]) -> list[Item]:
    """Class 0's items, then class 1's, ... (the source order a split is written in)."""
    return [item for items in per_class for item in items]


def select_long_tail(
    per_class: list[list[Item]],
    profile: str,
    imbalance: float,
    n_max: int | None = None,
    classes: list[str] | None = None,
) -> tuple[list[list[Item]], dict[str, Any]]:
    """Keep the first n_c items of class c (in file-name order) under the named profile.

    n_max defaults to the largest class. A class with fewer than n_c items cannot give the
    requested profile: that is refused, saying which --imbalance this source can meet.
    """
    check_imbalance(imbalance)
    available = [len(items) for items in per_class]
    n_max = n_max or max(available)
    targets = long_tail_counts(profile, n_max, len(per_class), imbalance)
    short = [c for c, (n, have) in enumerate(zip(targets, available, strict=True)) if n > have]
    if short:
        raise LtrayError(_unmet(profile, imbalance, n_max, targets, available, short[0], classes))
    kept = [items[:n] for items, n in zip(per_class, targets, strict=True)]
    return kept, {"name": profile, "imbalance": float(imbalance), "n_max": int(n_max)}


def _unmet(
    profile: str,
    imbalance: float,
    n_max: int,
    targets: list[int],
    available: list[int],
    label: int,
    classes: list[str] | None,
) -> str:
    """One line: which class falls short of the profile, and what this source allows."""
    name = repr(classes[label]) if classes else str(label)
    line = (
        f"--imbalance {imbalance:g} ({profile} profile, n_max {n_max}) needs "
        f"{targets[label]} train images in class {name} (label {label}), which has "
        f"{available[label]}"
    )
    source_if = max(available) / min(available)
    if source_if > imbalance:
        line += f"; the train split is already more imbalanced than that (IF {source_if:.3g})"
    best = smallest_imbalance(profile, n_max, available)
    if best is None:
        return line + (
            f"; no --imbalance fits: the profile gives the most images to the first labels, "
            f"and class {name} is too small for that"
        )
    whole = long_tail_counts(profile, n_max, len(available), best)
    return line + (
        f"; the smallest --imbalance this source meets is {best:g} "
        f"({max(whole)} / {min(whole)} = {max(whole) / min(whole):.3g} in whole images)"
    )


def carve_val(
    per_class: list[list[Item]], fraction: float, seed: int
) -> tuple[list[list[Item]], list[list[Item]]]:
    """Move a seeded, per-class fraction of the items to a val split: (train, val).

    Each class gives round(fraction * n) items, at least one while it keeps one for train.
    """
    if not 0.0 < fraction < 1.0:
        raise LtrayError(f"--val-fraction must be in (0, 1), got {fraction}")
    train, val = [], []
    for label, items in enumerate(per_class):
        take = min(max(1, round(fraction * len(items))), len(items) - 1)
        picked = set(np.random.default_rng([seed, label]).permutation(len(items))[:take].tolist())
        val.append([it for i, it in enumerate(items) if i in picked])
        train.append([it for i, it in enumerate(items) if i not in picked])
    return train, val


def _tree_plan(
    kind: str,
    tree: ClassTree,
    imbalance: float | None,
    profile: str,
    seed: int,
    n_max: int | None = None,
    val_fraction: float | None = None,
    val_per_class: int = 0,
) -> SourcePlan:
    splits = dict(tree.splits)
    check_val_per_class(val_per_class)
    if val_per_class and val_fraction is not None:
        raise LtrayError("--val-per-class and --val-fraction both carve val: pass one of them")
    if (val_per_class or val_fraction is not None) and "val" in splits:
        option = "--val-per-class" if val_per_class else "--val-fraction"
        raise LtrayError(f"{option}: the source already has a val/ split; drop {option}")
    if val_fraction is not None:
        splits["train"], splits["val"] = carve_val(splits["train"], val_fraction, seed)
    source_train = splits["train"]
    if imbalance is not None:
        splits["train"], prof = select_long_tail(
            splits["train"], profile, imbalance, n_max, tree.classes
        )
    else:
        prof = {"name": "none", "imbalance": None, "n_max": max(map(len, splits["train"]))}
    carve = None
    if val_per_class:
        left_out = [
            items[len(kept) :] for items, kept in zip(source_train, splits["train"], strict=True)
        ]
        splits["train"], splits["val"], carve = carve_val_per_class(
            splits["train"], left_out, val_per_class, seed, tree.classes
        )
    prof["seed"] = seed
    ordered = {s: flatten(splits[s]) for s in ("train", "val", "test") if s in splits}
    params = {
        "imbalance": imbalance,
        "profile": profile,
        "seed": seed,
        "val_fraction": val_fraction,
    }
    if val_per_class:  # absent when 0, so data sets prepared before it keep their fingerprint
        params["val_per_class"] = val_per_class
    plan = SourcePlan(kind, tree.classes, ordered, prof, params)
    plan.val_carve = carve
    return plan


def imagefolder(
    src: str,
    scratch: str,
    *,
    imbalance: float | None = None,
    profile: str = "exp",
    val_fraction: float | None = None,
    val_per_class: int = 0,
    seed: int = 0,
    storage_options: StorageOptions = None,
) -> SourcePlan:
    """A class-per-folder tree or a .tar/.tar.gz of one (split folders train/val/test optional).

    val comes from the tree's val/, or is carved from train by --val-fraction (a seeded
    fraction of every class, before the long tail is taken) or --val-per-class (N per class,
    preferring what the long tail leaves out; see :mod:`ltray.data.prepare.val_split`)."""
    check_val_per_class(val_per_class)
    tree = split_classes(list_tree(src, scratch, storage_options), src)
    plan = _tree_plan(
        "imagefolder", tree, imbalance, profile, seed, None, val_fraction, val_per_class
    )
    plan.origin = {"src": redact_url(src)}
    plan.roots = [src]
    return plan


# --- CIFAR ---------------------------------------------------------------------------------


def _find_cifar_pickles(src: str, storage_options: StorageOptions) -> tuple[str, str] | None:
    """(folder, 'cifar10'|'cifar100') if ``src`` is or holds a torchvision CIFAR copy."""
    for folder in (
        src,
        fs.join_url(src, "cifar-10-batches-py"),
        fs.join_url(src, "cifar-100-python"),
    ):
        names = set(fs.list_names(folder, storage_options))
        if {"data_batch_1", "batches.meta", "test_batch"} <= names:
            return folder, "cifar10"
        if {"train", "test", "meta"} <= names:
            return folder, "cifar100"
    return None


def _cifar_pickle_split(
    folder: str, files: list[str], label_key: str, storage_options: StorageOptions, n: int
) -> list[list[Item]]:
    per_class: list[list[Item]] = [[] for _ in range(n)]
    for name in files:
        path = fs.join_url(folder, name)
        filesystem, inner = fs.get_fs(path, storage_options)
        with fs.fs_errors(path, storage_options):
            stamp = content_stamp(filesystem.info(inner))
        try:
            labels = load_pickle(path, storage_options)[label_key]
        except (KeyError, EOFError, ValueError, TypeError) as exc:
            raise LtrayError(f"{redact_url(path)}: not a CIFAR pickle ({exc})") from None
        for i, label in enumerate(labels):
            if not 0 <= int(label) < n:
                raise LtrayError(
                    f"{redact_url(path)}: image {i} has label {label}, not in [0, {n})"
                )
            per_class[int(label)].append(
                Item(f"{name}/{i:05d}", int(label), ArrayRef(path, i), 2500, stamp)
            )
    return per_class


def _cifar_from_pickles(folder: str, dataset: str, storage_options: StorageOptions) -> ClassTree:
    if dataset == "cifar10":
        meta = load_pickle(fs.join_url(folder, "batches.meta"), storage_options)
        classes = list(meta["label_names"])
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, key = ["test_batch"], "labels"
    else:
        meta = load_pickle(fs.join_url(folder, "meta"), storage_options)
        classes = list(meta["fine_label_names"])
        train_files, test_files, key = ["train"], ["test"], "fine_labels"
    n = len(classes)
    splits = {
        "train": _cifar_pickle_split(folder, train_files, key, storage_options, n),
        "test": _cifar_pickle_split(folder, test_files, key, storage_options, n),
    }
    return ClassTree(classes, splits, folder)


def cifar_lt(
    src: str,
    scratch: str,
    *,
    imbalance: float,
    dataset: str = "cifar10",
    profile: str = "exp",
    seed: int = 0,
    n_max: int | None = None,
    val_per_class: int = 0,
    storage_options: StorageOptions = None,
) -> SourcePlan:
    """CIFAR-10/100-LT from the image-folder archive, an extracted folder, or the pickles.

    n_max is the protocol's (5000 / 500, every class of the real set); a smaller one serves a
    subset of CIFAR. val_per_class > 0 holds out a balanced val split from the training images
    (:mod:`ltray.data.prepare.val_split`); 0, the default, keeps the published protocol."""
    check_val_per_class(val_per_class)
    if dataset not in CIFAR:
        raise LtrayError(f"--dataset must be one of {', '.join(CIFAR)}, got {dataset!r}")
    check_imbalance(imbalance)
    num_classes, full = CIFAR[dataset]
    n_max = n_max or full
    if not fs.exists(src, storage_options):
        raise LtrayError(f"{redact_url(src)}: not found")
    found = (
        None
        if str(src).lower().endswith((".tar", ".gz", ".tgz"))
        else _find_cifar_pickles(src, storage_options)
    )
    if found is not None:
        folder, kind = found
        if kind != dataset:
            raise LtrayError(f"{redact_url(src)} holds {kind}, but --dataset is {dataset}")
        tree = _cifar_from_pickles(folder, dataset, storage_options)
    else:
        tree = split_classes(list_tree(src, scratch, storage_options), src)
    if len(tree.classes) != num_classes:
        raise LtrayError(
            f"{redact_url(src)}: has {len(tree.classes)} classes; {dataset} has {num_classes}"
        )
    if "test" not in tree.splits:
        raise LtrayError(f"{redact_url(src)}: no test split (expected train/ and test/)")
    plan = _tree_plan("cifar-lt", tree, imbalance, profile, seed, n_max, None, val_per_class)
    plan.params["dataset"] = dataset
    if n_max != full:
        plan.params["n_max"] = n_max
    plan.origin = {"src": redact_url(src)}
    plan.roots = [src] if found is None else []
    return plan


# --- synthetic -----------------------------------------------------------------------------


def synthetic(
    *,
    classes: int = 10,
    n_max: int = 200,
    imbalance: float = 20.0,
    profile: str = "exp",
    image_size: int = 32,
    test_per_class: int = 50,
    seed: int = 0,
    fmt: str = "jpeg",
    val_per_class: int = 0,
) -> SourcePlan:
    """A generated long-tailed set: striped class patterns (see ltray.data.prepare.synthetic).

    ``val_per_class`` adds a balanced val split of as many images per class, generated apart
    from the train and test images (what a sweep selects on). The defaults (10 classes,
    200 ... 10 train images) span all three frequency groups at the
    usual thresholds: 3 many (> 100), 4 medium and 3 few (< 20), as the real benchmarks do.
    """
    if classes < 2:
        raise LtrayError(f"--classes must be at least 2, got {classes}")
    if not 8 <= image_size <= 1024:
        raise LtrayError(f"--image-size must be in [8, 1024], got {image_size}")
    if test_per_class < 0:
        raise LtrayError(f"--test-per-class must be >= 0, got {test_per_class}")
    if val_per_class < 0:
        raise LtrayError(f"--val-per-class must be >= 0, got {val_per_class}")
    if fmt not in FORMATS:
        raise LtrayError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    counts = long_tail_counts(profile, n_max, classes, imbalance)
    names = [f"class_{c:0{len(str(classes - 1))}d}" for c in range(classes)]
    est = image_size * image_size // 3

    def items(split: str, per_class: list[int]) -> list[Item]:
        return [
            Item(
                f"synthetic/{split}/{names[c]}/{i:06d}",
                c,
                SyntheticRef(seed, split, c, i, classes, image_size, fmt),
                est,
            )
            for c, n in enumerate(per_class)
            for i in range(n)
        ]

    splits = {"train": items("train", counts)}
    if test_per_class:
        splits["test"] = items("test", [test_per_class] * classes)
    if val_per_class:
        splits["val"] = items("val", [val_per_class] * classes)
    prof = {"name": profile, "imbalance": float(imbalance), "n_max": n_max, "seed": seed}
    params = {
        "classes": classes,
        "image_size": image_size,
        "test_per_class": test_per_class,
        "format": fmt,
        **prof,
    }
    if val_per_class:  # absent when 0: the sets prepared before it existed keep their identity
        params["val_per_class"] = val_per_class
    return SourcePlan("synthetic", names, splits, prof, params)
