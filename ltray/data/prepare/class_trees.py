"""List a class-per-folder image tree held in a directory (any fsspec URL) or a tar archive.

A tar is read in place: members are addressed by offset so that worker processes read them in
parallel. A compressed tar (.tar.gz, .tgz) cannot be seeked, so it is first decompressed once
into a local scratch file. The tree is then cut into splits and classes:

    ROOT/[wrapper/]train/<class>/**/file   val/...   test/...    (split folders at the top)
    ROOT/[wrapper/]<class>/**/file                                 (no split folders: all train)

Single wrapper folders (``cifar10/``) are descended; hidden files and the files operating
systems leave in image folders (``Thumbs.db``, ``desktop.ini``, ``__MACOSX/``) are ignored.
Every file carries a stamp (size and modification time, as listed) that fingerprints its
contents.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

from ltray import fs
from ltray.data.prepare.fingerprint import content_stamp
from ltray.data.prepare.image_refs import FileRef, Item, Ref, TarRef
from ltray.errors import LtrayError
from ltray.fs import StorageOptions
from ltray.secrets import redact_url

SPLIT_NAMES = ("train", "val", "test")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
OS_FILES = {"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "__macosx"}


@dataclass(frozen=True)
class TreeFile:
    rel: str  # path inside the tree, '/'-separated, e.g. "cifar10/train/cat/0001.jpg"
    ref: Ref
    size: int
    stamp: str = ""


@dataclass
class Tree:
    files: list[TreeFile]
    dirs: set[str]  # every folder, as rel paths ("" is the root)


@dataclass
class ClassTree:
    """A tree cut into splits; items of each split grouped per class in file-name order."""

    classes: list[str]
    splits: dict[str, list[list[Item]]]  # split -> [class label -> items sorted by id]
    root: str  # rel path of the folder that holds the splits or classes


def is_tar(src: str) -> bool:
    return str(src).lower().endswith(TAR_SUFFIXES)


def _hidden(rel: str) -> bool:
    """Hidden (.DS_Store, ._x.jpg) or left by an OS (Thumbs.db, __MACOSX/): not images."""
    return any(part.startswith(".") or part.lower() in OS_FILES for part in rel.split("/"))


def _with_parents(dirs: set[str], rels: Iterable[str]) -> set[str]:
    out = set(dirs) | {""}
    for rel in rels:
        parent = posixpath.dirname(rel)
        while parent and parent not in out:
            out.add(parent)
            parent = posixpath.dirname(parent)
    return out


def list_dir_tree(src: str, storage_options: StorageOptions = None) -> Tree:
    """Every file and folder under a directory URL.

    Object stores have no folders, only keys: there the folders are the files' parents (an
    empty class folder cannot exist). Locally, empty folders are listed too, so that an empty
    class folder is reported rather than silently dropped.
    """
    filesystem, root = fs.get_fs(src, storage_options)
    with fs.fs_errors(src, storage_options):
        if not filesystem.exists(root):
            raise FileNotFoundError(src)
        if not filesystem.isdir(root):
            raise LtrayError(f"{redact_url(src)}: not a folder or a .tar/.tar.gz archive")
        entries = filesystem.find(root, detail=True)
        folders = (
            filesystem.find(root, withdirs=True, detail=True) if fs.is_local(filesystem) else {}
        )
    root = root.rstrip("/")

    def rel_of(name: str) -> str:
        return name[len(root) :].lstrip("/")

    files = [
        TreeFile(
            rel_of(name),
            FileRef(fs.join_url(src, rel_of(name))),
            int(info.get("size") or 0),
            content_stamp(info),
        )
        for name, info in entries.items()
        if info.get("type") != "directory" and rel_of(name) and not _hidden(rel_of(name))
    ]
    dirs = {
        rel_of(name)
        for name, info in folders.items()
        if info.get("type") == "directory" and rel_of(name) and not _hidden(rel_of(name))
    }
    return Tree(files, _with_parents(dirs, (f.rel for f in files)))


def _decompress(src: str, scratch: str, storage_options: StorageOptions) -> str:
    """Gunzip ``src`` into ``scratch/source.tar`` (local), the one sequential pass."""
    os.makedirs(scratch, exist_ok=True)
    out = os.path.join(scratch, "source.tar")
    with fs.open_url(src, "rb", storage_options) as raw, fs.fs_errors(src, storage_options):
        try:
            with gzip.GzipFile(fileobj=raw) as unzipped, open(out, "wb") as f:
                shutil.copyfileobj(unzipped, f, 1 << 22)
        except (gzip.BadGzipFile, EOFError, OSError) as exc:
            if isinstance(exc, (FileNotFoundError, PermissionError)):
                raise
            raise LtrayError(f"{redact_url(src)}: not a readable .tar.gz ({exc})") from None
    return out


def list_tar_tree(src: str, scratch: str, storage_options: StorageOptions = None) -> Tree:
    """Every regular member of a tar; compressed archives are decompressed to ``scratch``."""
    if not fs.exists(src, storage_options):
        raise LtrayError(f"{redact_url(src)}: not found")
    compressed = str(src).lower().endswith((".gz", ".tgz"))
    tar_url = _decompress(src, scratch, storage_options) if compressed else src
    opts = None if compressed else storage_options
    files: list[TreeFile] = []
    dirs: set[str] = set()
    with fs.open_url(tar_url, "rb", opts) as f, fs.fs_errors(src, storage_options):
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:
                    rel = posixpath.normpath(member.name).lstrip("/")
                    if rel in ("", ".") or rel.startswith("..") or _hidden(rel):
                        continue
                    if member.isdir():
                        dirs.add(rel)
                    elif member.isfile():
                        ref = TarRef(tar_url, member.offset_data, member.size)
                        stamp = f"{member.size}:{member.mtime}:{member.chksum}"
                        files.append(TreeFile(rel, ref, member.size, stamp))
        except tarfile.TarError as exc:
            raise LtrayError(f"{redact_url(src)}: not a readable tar archive ({exc})") from None
    return Tree(files, _with_parents(dirs, (f.rel for f in files)))


def list_tree(src: str, scratch: str, storage_options: StorageOptions = None) -> Tree:
    """A directory or a (compressed) tar, whichever ``src`` is."""
    if is_tar(src):
        return list_tar_tree(src, scratch, storage_options)
    return list_dir_tree(src, storage_options)


def _children(dirs: set[str], parent: str) -> list[str]:
    return sorted(d for d in dirs if d and posixpath.dirname(d) == parent)


def _find_root(tree: Tree) -> str:
    """Descend single wrapper folders (``cifar10/``) down to the splits or the classes."""
    root = ""
    while True:
        subdirs = _children(tree.dirs, root)
        direct_files = [f for f in tree.files if posixpath.dirname(f.rel) == root]
        if len(subdirs) != 1 or direct_files or posixpath.basename(subdirs[0]) in SPLIT_NAMES:
            return root
        root = subdirs[0]


def split_classes(tree: Tree, src: str) -> ClassTree:
    """Cut a tree into splits and classes; classes are the train class folders, sorted."""
    shown = redact_url(src)
    root = _find_root(tree)
    top = _children(tree.dirs, root)
    split_dirs = {posixpath.basename(d): d for d in top if posixpath.basename(d) in SPLIT_NAMES}
    if split_dirs and "train" not in split_dirs:
        raise LtrayError(f"{shown}: has {', '.join(sorted(split_dirs))} folders but no train/")
    has_splits = bool(split_dirs)
    if not has_splits:
        split_dirs = {"train": root}
    class_dirs = {
        split: {posixpath.basename(d): d for d in _children(tree.dirs, folder)}
        for split, folder in split_dirs.items()
    }
    classes = sorted(class_dirs["train"])
    if len(classes) < 2:
        raise LtrayError(
            f"{shown}: found {len(classes)} class folder(s) in {split_dirs['train'] or 'the root'}"
            "; an image-folder tree needs at least 2 (ROOT/<class>/<image>)"
        )
    label_of = {name: i for i, name in enumerate(classes)}
    for folders in class_dirs.values():
        for name, folder in folders.items():
            if name not in label_of:
                raise LtrayError(f"{shown}: {folder}/ is a class that train/ does not have")
    files_of = _files_per_class(tree, root, has_splits)
    splits: dict[str, list[list[Item]]] = {}
    for split in [s for s in SPLIT_NAMES if s in split_dirs]:
        per_class: list[list[Item]] = [[] for _ in classes]
        for name, folder in class_dirs[split].items():
            files = files_of.get((split, name), [])
            if not files:
                raise LtrayError(f"{shown}: class folder {folder}/ is empty")
            label = label_of[name]
            files.sort(key=lambda f: f.rel)
            per_class[label] = [Item(f.rel, label, f.ref, f.size, f.stamp) for f in files]
        splits[split] = per_class
    return ClassTree(classes, splits, root)


def _files_per_class(tree: Tree, root: str, has_splits: bool) -> dict[tuple[str, str], list]:
    """(split, class name) -> files anywhere below that class folder."""
    out: dict[tuple[str, str], list[TreeFile]] = {}
    prefix = root + "/" if root else ""
    depth = 2 if has_splits else 1
    for f in tree.files:
        if not f.rel.startswith(prefix):
            continue
        parts = f.rel[len(prefix) :].split("/")
        if len(parts) <= depth:
            continue  # a loose file beside the class folders (README, LICENSE): not an image
        key = (parts[0], parts[1]) if has_splits else ("train", parts[0])
        out.setdefault(key, []).append(f)
    return out
