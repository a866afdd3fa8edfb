"""The sources described by list or annotation files: ImageNet-LT and iNaturalist 2018.

Both name every image with its label up front, so the long-tail profile is the one the files
give ("given"); a label outside the class range, an empty class, or a line / JSON document
that does not parse is an error naming the file and the line or entry. Every named image is
stamped (size and modification time) by listing its folder once, which also sizes the shards.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import replace
from typing import Any

from ltray import fs
from ltray.data.prepare.fingerprint import stat_files
from ltray.data.prepare.image_refs import FileRef, Item
from ltray.data.prepare.sources import SourcePlan, flatten
from ltray.data.prepare.val_split import carve_val_per_class, check_val_per_class
from ltray.errors import LtrayError
from ltray.fs import StorageOptions
from ltray.secrets import redact_url

# --- ImageNet-LT ---------------------------------------------------------------------------


def _read_text(url: str, storage_options: StorageOptions) -> str:
    data = fs.read_bytes(url, storage_options)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise LtrayError(f"{redact_url(url)}: not a UTF-8 text file") from None


def parse_list_file(text: str, name: str) -> list[tuple[str, int, int]]:
    """``relative/path.JPEG label`` lines -> [(path, label, line number)]; blank lines skipped."""
    rows = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise LtrayError(f"{name} line {lineno}: expected 'PATH LABEL', got {line.strip()!r}")
        if parts[0] in seen:
            raise LtrayError(
                f"{name} line {lineno}: {parts[0]} is listed again (line {seen[parts[0]]})"
            )
        seen[parts[0]] = lineno
        rows.append((parts[0], int(parts[1]), lineno))
    return rows


def read_class_names(url: str, storage_options: StorageOptions) -> list[str]:
    """Class names in label order: one a line, or a JSON list."""
    text = _read_text(url, storage_options)
    if text.lstrip().startswith("["):
        try:
            return [str(c) for c in json.loads(text)]
        except json.JSONDecodeError as exc:
            raise LtrayError(
                f"{redact_url(url)} line {exc.lineno}: not valid JSON ({exc.msg})"
            ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _per_class(items: list[Item], n: int) -> list[list[Item]]:
    out: list[list[Item]] = [[] for _ in range(n)]
    for item in items:
        out[item.label].append(item)
    return out


def _empty_classes_check(per_class: list[list[Item]], classes: list[str], where: str) -> None:
    empty = [f"{i} ({classes[i]})" for i, items in enumerate(per_class) if not items]
    if empty:
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise LtrayError(f"{where}: class {', '.join(empty[:5])}{more} has no train images")


def _stamped(splits: dict[str, list[Item]], storage_options: StorageOptions) -> None:
    """Give every item its size and content stamp, in place."""
    urls = [item.ref.url for items in splits.values() for item in items]  # type: ignore[union-attr]
    stats = stat_files(urls, storage_options)
    for split, items in splits.items():
        splits[split] = [
            replace(item, stamp=stats[url][0], size=stats[url][1])
            for item in items
            for url in [item.ref.url]  # type: ignore[union-attr]
        ]


WNID = re.compile(r"(?:^|/)(n\d{8})(?=[/_.])")


def wordnet_ids(rows: list[tuple[str, int, int]], n: int) -> list[str] | None:
    """Class names from the WordNet ids in ImageNet paths (train/n01440764/n01440764_1.JPEG),
    if every label has exactly one and no two labels share one; else None."""
    found: list[set[str]] = [set() for _ in range(n)]
    for path, label, _ in rows:
        match = WNID.search(path)
        if match is None or not 0 <= label < n:
            return None
        found[label].add(match.group(1))
    if any(len(ids) != 1 for ids in found):
        return None
    names = [next(iter(ids)) for ids in found]
    return names if len(set(names)) == n else None


def _label_gap(rows: list[tuple[str, int, int]], name: str) -> None:
    """With the class count taken from the largest label, a label past a gap is a typo far
    likelier than a run of empty classes: name its line."""
    used = {label for _, label, _ in rows}
    top = 0
    while top in used:
        top += 1
    beyond = [(lineno, label) for _, label, lineno in rows if label > top]
    if beyond:
        lineno, label = min(beyond)
        raise LtrayError(
            f"{name} line {lineno}: label {label} is out of range: labels 0-{top - 1} have "
            f"train images, {top}-{label - 1} none (pass --num-classes or --classes if "
            "that is meant)"
        )


def _given_profile(per_class: list[list[Item]], seed: int) -> dict[str, Any]:
    counts = [len(c) for c in per_class]
    return {
        "name": "given",
        "imbalance": max(counts) / max(1, min(counts)),
        "n_max": max(counts),
        "seed": seed,
    }


def imagenet_lt(
    images: str,
    lists: str,
    *,
    classes_file: str | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    storage_options: StorageOptions = None,
) -> SourcePlan:
    """ImageNet-LT from its list files ImageNet_LT_{train,val,test}.txt under ``lists``."""
    if not fs.exists(images, storage_options):
        raise LtrayError(f"--images {redact_url(images)}: not found")
    found: dict[str, list[tuple[str, int, int]]] = {}
    for split in ("train", "val", "test"):
        url = fs.join_url(lists, f"ImageNet_LT_{split}.txt")
        if split == "train" or fs.exists(url, storage_options):
            found[split] = parse_list_file(
                _read_text(url, storage_options), posixpath.basename(url)
            )
    classes = read_class_names(classes_file, storage_options) if classes_file else None
    train = found["train"]
    labels = 1 + max((label for _, label, _ in train), default=-1)
    if classes is not None and num_classes is None and len(classes) != labels:
        lineno = max(train, key=lambda r: r[1])[2] if train else 0
        raise LtrayError(
            f"{classes_file}: {len(classes)} class names, but ImageNet_LT_train.txt has labels "
            f"0-{labels - 1} (the largest on line {lineno}), so {labels} classes"
        )
    if classes is None and num_classes is None:
        _label_gap(train, "ImageNet_LT_train.txt")
    n = num_classes or (len(classes) if classes else labels)
    if classes is None:
        classes = wordnet_ids(train, n) if labels == n else None
        classes = classes or [f"class_{i}" for i in range(n)]
    if len(classes) != n:
        raise LtrayError(f"{classes_file}: {len(classes)} class names for --num-classes {n}")
    splits: dict[str, list[Item]] = {}
    for split, rows in found.items():
        name = f"ImageNet_LT_{split}.txt"
        for _path, label, lineno in rows:
            if not 0 <= label < n:
                raise LtrayError(
                    f"{name} line {lineno}: label {label} is outside the class range [0, {n})"
                )
        items = [Item(p, lab, FileRef(fs.join_url(images, p))) for p, lab, _ in rows]
        splits[split] = flatten(_per_class(items, n))
    per_class = _per_class(splits["train"], n)
    _empty_classes_check(per_class, classes, "ImageNet_LT_train.txt")
    _stamped(splits, storage_options)
    params = {"num_classes": n, "seed": seed}
    origin = {"images": redact_url(images), "lists": redact_url(lists)}
    profile = _given_profile(per_class, seed)
    return SourcePlan("imagenet-lt", classes, splits, profile, params, origin)


# --- iNaturalist 2018 ----------------------------------------------------------------------


def _load_json(url: str, storage_options: StorageOptions) -> Any:
    text = _read_text(url, storage_options)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LtrayError(
            f"{posixpath.basename(url)} line {exc.lineno}: not valid JSON ({exc.msg})"
        ) from None


def _coco_items(data: Any, name: str, images: str, label_of: dict[int, int]) -> list[Item]:
    """COCO-style images + annotations -> items; every image needs one known category."""
    if not isinstance(data, dict) or not {"images", "annotations"} <= set(data):
        raise LtrayError(f"{name}: expected a JSON object with 'images' and 'annotations'")
    image_ids = set()
    for i, image in enumerate(data["images"]):
        try:
            image_ids.add(image["id"])
        except (KeyError, TypeError):
            raise LtrayError(f"{name}: image {i} lacks id or file_name") from None
    category_of: dict[Any, tuple[int, int]] = {}  # image id -> (label, annotation index)
    for i, ann in enumerate(data["annotations"]):
        try:
            image_id, category = ann["image_id"], ann["category_id"]
        except (KeyError, TypeError):
            raise LtrayError(f"{name}: annotation {i} lacks image_id or category_id") from None
        if category not in label_of:
            raise LtrayError(
                f"{name}: annotation {i} (image_id {image_id}): category_id {category} is "
                f"outside the class range (not one of the {len(label_of)} categories)"
            )
        if image_id not in image_ids:
            raise LtrayError(f"{name}: annotation {i} names image_id {image_id}, not in 'images'")
        earlier = category_of.get(image_id)
        if earlier is not None and earlier[0] != label_of[category]:
            raise LtrayError(
                f"{name}: annotation {i} gives image {image_id} category_id {category}, but "
                f"annotation {earlier[1]} gave it another; an image takes one label"
            )
        category_of[image_id] = (label_of[category], i)
    items = []
    for i, image in enumerate(data["images"]):
        try:
            image_id, file_name = image["id"], str(image["file_name"])
        except (KeyError, TypeError):
            raise LtrayError(f"{name}: image {i} lacks id or file_name") from None
        if image_id not in category_of:
            raise LtrayError(f"{name}: image {image_id} ({file_name}) has no annotation")
        items.append(
            Item(file_name, category_of[image_id][0], FileRef(fs.join_url(images, file_name)))
        )
    return items


def inat18(
    images: str,
    annotations: str,
    *,
    seed: int = 0,
    val_per_class: int = 0,
    storage_options: StorageOptions = None,
) -> SourcePlan:
    """iNaturalist 2018 from train2018.json / val2018.json (labels: category ids sorted).

    By default val2018 is the ``val`` split. With val_per_class N > 0, val2018 becomes
    ``test`` (what long-tail papers report on iNat18) and ``val`` is N images per class held
    out from train2018 (:mod:`ltray.data.prepare.val_split`), so selection never reads test.
    """
    check_val_per_class(val_per_class)
    if not fs.exists(images, storage_options):
        raise LtrayError(f"--images {redact_url(images)}: not found")
    train = _load_json(fs.join_url(annotations, "train2018.json"), storage_options)
    try:
        categories = sorted(train["categories"], key=lambda c: c["id"])
        label_of = {c["id"]: i for i, c in enumerate(categories)}
        classes = [str(c.get("name", f"class_{c['id']}")) for c in categories]
    except (KeyError, TypeError):
        raise LtrayError("train2018.json: 'categories' must be a list of {id, name}") from None
    splits = {"train": _coco_items(train, "train2018.json", images, label_of)}
    val_url = fs.join_url(annotations, "val2018.json")
    official = "test" if val_per_class else "val"
    if fs.exists(val_url, storage_options):
        val = _load_json(val_url, storage_options)
        splits[official] = _coco_items(val, "val2018.json", images, label_of)
    n = len(classes)
    per_class = _per_class(splits["train"], n)
    _empty_classes_check(per_class, classes, "train2018.json")
    carve = None
    if val_per_class:
        kept, held, carve = carve_val_per_class(
            per_class, [[] for _ in range(n)], val_per_class, seed, classes
        )
        splits["train"], splits["val"] = flatten(kept), flatten(held)
        per_class = kept
    order = [s for s in ("train", "val", "test") if s in splits]
    splits = {s: flatten(_per_class(splits[s], n)) for s in order}
    _stamped(splits, storage_options)
    origin = {"images": redact_url(images), "annotations": redact_url(annotations)}
    profile = _given_profile(per_class, seed)
    params: dict[str, Any] = {"seed": seed}
    if val_per_class:
        params["val_per_class"] = val_per_class
    plan = SourcePlan("inat18", classes, splits, profile, params, origin)
    plan.val_carve = carve
    return plan
