"""The runtime environment a submitted job runs in: which files are uploaded (Ray's rules: the
``excludes`` patterns plus each folder's .gitignore and .rayignore), whether they fit Ray's
upload limit. (No credential may travel in it: ltray.cluster.submission refuses a file that
holds one.)"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.config import SubmitConfig
from ltray.errors import LtrayError

try:  # the limit Ray's upload enforces (the largest gRPC message, 512 MiB by default)
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE as UPLOAD_LIMIT
except ImportError:  # pragma: no cover - older or newer Ray
    UPLOAD_LIMIT = 512 * 1024 * 1024
LARGEST_SHOWN = 5


@dataclass(frozen=True)
class Upload:
    """The files Ray would upload from ``root``: (path relative to root, bytes) each."""

    root: Path
    files: list[tuple[str, int]]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def includes(self, relative: str) -> bool:
        return any(path == relative for path, _ in self.files)


def _pathspec(lines: list[str]) -> Any:
    # the matcher Ray's packaging uses (its vendored pathspec), so what is counted here is what
    # Ray uploads (tests/cluster/test_runtime_env.py compares the two)
    from ray._private.thirdparty.pathspec import PathSpec

    return PathSpec.from_lines("gitwildmatch", lines)


def _ignore_files(folder: Path, include_gitignore: bool) -> list[tuple[Path, Any]]:
    specs = []
    names = [".gitignore", ".rayignore"] if include_gitignore else [".rayignore"]
    for name in names:
        if (folder / name).is_file():
            specs.append((folder, _pathspec((folder / name).read_text().splitlines())))
    return specs


def upload_files(root: Path, excludes: list[str]) -> Upload:
    """Walk ``root`` as Ray's packaging does: a path is skipped when the ``excludes`` (relative
    to root) or an ignore file of a folder above it (relative to that folder) matches it."""
    root = root.resolve()
    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    top = [(root, _pathspec(excludes))]
    files: list[tuple[str, int]] = []

    def skipped(path: Path, specs: list[tuple[Path, Any]]) -> bool:
        for base, spec in specs:
            relative = path.relative_to(base).as_posix()
            if spec.match_file(relative) or (path.is_dir() and spec.match_file(relative + "/")):
                return True
        return False

    def walk(folder: Path, specs: list[tuple[Path, Any]]) -> None:
        specs = specs + _ignore_files(folder, include_gitignore)
        for path in sorted(folder.iterdir()):
            if skipped(path, specs):
                continue
            if path.is_dir() and not path.is_symlink():
                walk(path, specs)
            elif path.is_file():
                files.append((path.relative_to(root).as_posix(), path.stat().st_size))

    walk(root, top)
    return Upload(root, files)


def _mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def check_upload_size(upload: Upload, limit: int = UPLOAD_LIMIT) -> None:
    """Refuse, naming the largest files, a working_dir over Ray's upload limit (counted before
    compression: data and weights barely compress)."""
    if upload.total_bytes < limit:
        return
    largest = sorted(upload.files, key=lambda item: -item[1])[:LARGEST_SHOWN]
    shown = ", ".join(f"{path} ({_mib(size)})" for path, size in largest)
    raise LtrayError(
        f"the working_dir {upload.root} holds {_mib(upload.total_bytes)} to upload, over Ray's "
        f"limit of {_mib(limit)}; the largest: {shown}. Add them to submit.runtime_env.excludes "
        "(or .rayignore), and put data and checkpoints on storage the cluster reads"
    )


SUBMISSION_ID_VAR = "LTRAY_SUBMISSION_ID"  # tags the MLflow run with the Ray job that made it


def runtime_env(
    submit: SubmitConfig, working_dir: Path | None, submission_id: str | None = None
) -> dict[str, Any]:
    """The dict Ray's ``submit_job`` takes."""
    env = submit.runtime_env
    env_vars = {"PYTHONUNBUFFERED": "1", **env.env_vars}
    if submission_id:
        env_vars[SUBMISSION_ID_VAR] = submission_id
    out: dict[str, Any] = {"env_vars": env_vars}
    if working_dir is not None:
        out["working_dir"] = str(working_dir)
        out["excludes"] = list(env.excludes)
    if env.pip is not None:
        out["pip"] = list(env.pip)
    if env.image_uri is not None:
        out["image_uri"] = env.image_uri
    return out
