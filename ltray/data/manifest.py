"""The data set index: ``OUT/manifest.json``, versioned, written last by ``ltray prepare``.

It names the classes in label order, each split's per-class counts and shards (path relative
to the data set, rows, bytes, sha256, rows per row group), the long-tail profile (name, IF,
n_max, seed, per-class train count and shot group), the source it came from, warnings about
what the prepare could not do as asked, the parts of its fingerprint (recipe, per-split
items and contents) so that a re-run can say what changed, and, for a data set prepared with
``--resize-shorter``, how its images were resized and their bytes before and after (``resize``;
null when the images are the source's own bytes, absent in older manifests). A directory
without it is not a data set (or a prepare that did not finish), and readers refuse it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ltray import fs
from ltray.data.profiles import shot_groups
from ltray.errors import LtrayError
from ltray.fs import StorageOptions
from ltray.secrets import redact_url

MANIFEST_NAME = "manifest.json"
FORMAT = "ltray-dataset"
VERSION = 1
PROGRESS_DIR = "_prepare"


@dataclass(frozen=True)
class ShardInfo:
    """One immutable Parquet file of a split."""

    path: str  # relative to the data set root, e.g. "train/part-00000.parquet"
    rows: int
    bytes: int
    sha256: str
    row_groups: tuple[int, ...]  # rows in each row group, in file order

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["row_groups"] = list(self.row_groups)
        return out

    def missing_from(self, root: str) -> LtrayError:
        return LtrayError(f"shard {self.path} is missing from {redact_url(root)}")

    def check_copy(self, size: int, sha256: str | None = None) -> None:
        """One clear error when a copy of this shard (its size, and its sha256 where given)
        is not the one the manifest describes."""
        if size != self.bytes:
            raise LtrayError(
                f"shard {self.path}: {size} bytes, the manifest says {self.bytes} "
                "(truncated or replaced)"
            )
        if sha256 is not None and sha256 != self.sha256:
            raise LtrayError(
                f"shard {self.path}: sha256 differs from the manifest (corrupt or replaced)"
            )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardInfo:
        groups = tuple(int(n) for n in data.get("row_groups") or [data["rows"]])
        return cls(
            str(data["path"]), int(data["rows"]), int(data["bytes"]), str(data["sha256"]), groups
        )


@dataclass(frozen=True)
class SplitInfo:
    class_counts: list[int]
    shards: list[ShardInfo]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


@dataclass
class Manifest:
    """The parsed manifest; ``url`` is where it was read from (never serialised)."""

    classes: list[str]
    splits: dict[str, SplitInfo]
    profile: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    version: int = VERSION
    url: str = ""
    # the fingerprint's parts (ltray.data.prepare.fingerprint); {} in older manifests
    fingerprints: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the prepare could not do as asked
    # shorter, jpeg_quality, filter, images, resized, source_bytes, bytes, splits; None: original
    resize: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def split_names(self) -> list[str]:
        return list(self.splits)

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def split(self, split: str) -> SplitInfo:
        if split not in self.splits:
            where = f" in {redact_url(self.url)}" if self.url else ""
            raise LtrayError(
                f"no split {split!r}{where}; it has: {', '.join(self.splits) or 'none'}"
            )
        return self.splits[split]

    def class_counts(self, split: str) -> list[int]:
        return list(self.split(split).class_counts)

    def num_rows(self, split: str) -> int:
        return self.split(split).rows

    def check_train_shares(self, split: str, world_size: int) -> None:
        """Refuse, before training, a training split that would leave one of ``world_size``
        ranks without a batch (each takes floor(rows / world_size) rows)."""
        rows = self.num_rows(split)
        if rows // world_size == 0:
            raise LtrayError(
                f"training split {split!r} has {rows} rows, fewer than scaling.num_workers="
                f"{world_size}: a worker would get no training batch (use fewer workers)"
            )

    def shards(self, split: str) -> list[ShardInfo]:
        return list(self.split(split).shards)

    def groups(self, many: int = 100, few: int = 20) -> list[str]:
        """'many' | 'medium' | 'few' per class, from the train counts."""
        return shot_groups(self.class_counts("train"), many, few)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "classes": list(self.classes),
            "splits": {
                name: {
                    "rows": info.rows,
                    "class_counts": list(info.class_counts),
                    "shards": [s.to_json() for s in info.shards],
                }
                for name, info in self.splits.items()
            },
            "profile": self.profile,
            "source": self.source,
            "warnings": list(self.warnings),
            "fingerprints": self.fingerprints,
            "resize": self.resize,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest") -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LtrayError(f"{where}: not an ltray data set manifest")
        if data.get("version") != VERSION:
            raise LtrayError(
                f"{where}: manifest version {data.get('version')!r} is not supported "
                f"(this ltray reads version {VERSION}); re-run ltray prepare"
            )
        try:
            classes = [str(c) for c in data["classes"]]
            splits = {
                str(name): SplitInfo(
                    [int(n) for n in info["class_counts"]],
                    [ShardInfo.from_json(s) for s in info["shards"]],
                )
                for name, info in data["splits"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise LtrayError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
        for name, info in splits.items():
            if len(info.class_counts) != len(classes):
                raise LtrayError(
                    f"{where}: split {name!r} has {len(info.class_counts)} class counts "
                    f"for {len(classes)} classes"
                )
            if sum(info.class_counts) != info.rows:
                raise LtrayError(f"{where}: split {name!r}: class counts do not sum to its rows")
        return cls(
            classes=classes,
            splits=splits,
            profile=dict(data.get("profile") or {}),
            source=dict(data.get("source") or {}),
            fingerprint=str(data.get("fingerprint", "")),
            fingerprints=dict(data.get("fingerprints") or {}),
            warnings=[str(w) for w in data.get("warnings") or []],
            resize=dict(data["resize"]) if data.get("resize") else None,
        )


def read_manifest(url: str, storage_options: StorageOptions = None) -> Manifest:
    """Read ``url/manifest.json``; missing (no data set, or half-written) raises LtrayError."""
    path = fs.join_url(url, MANIFEST_NAME)
    shown = redact_url(url)
    if not fs.exists(path, storage_options):
        if not fs.exists(url, storage_options):
            raise LtrayError(f"no data set at {shown}: it does not exist")
        if fs.list_names(url, storage_options):
            raise LtrayError(
                f"{shown} has no {MANIFEST_NAME}: a half-written data set (a prepare that did not "
                "finish?); re-run ltray prepare to complete it"
            )
        raise LtrayError(f"no data set at {shown}: it is empty (no {MANIFEST_NAME})")
    raw = fs.read_bytes(path, storage_options)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LtrayError(f"{redact_url(path)}: not valid JSON ({exc})") from None
    manifest = Manifest.from_json(data, redact_url(path))
    manifest.url = str(url)
    return manifest


def write_manifest(manifest: Manifest, url: str, storage_options: StorageOptions = None) -> None:
    """Write ``url/manifest.json`` in one piece (rename where the filesystem allows)."""
    # allow_nan=False: Infinity / NaN are not JSON, and no field of ours may hold them
    text = json.dumps(manifest.to_json(), indent=1, sort_keys=False, allow_nan=False) + "\n"
    fs.write_bytes(fs.join_url(url, MANIFEST_NAME), text.encode(), storage_options)
