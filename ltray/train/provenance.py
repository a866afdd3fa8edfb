"""Where a run's code came from: ltray's version and, when ltray runs from a git checkout, the
commit of that checkout (with ``-dirty`` when it has uncommitted changes).

The commit is read from the folder ltray is imported from, never from the folder the user
runs in (that may be their own project's repository). An installed ltray is not a checkout
and says so.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

NOT_A_CHECKOUT = "not a checkout"


def ltray_version() -> str:
    try:
        return version("ltray")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown (not installed)"


def _git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.cache
def ltray_commit(package_dir: Path | None = None) -> str:
    """The commit of the checkout ltray runs from, or ``not a checkout``."""
    package_dir = package_dir or Path(__file__).resolve().parents[1]
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != package_dir.parent:
        return NOT_A_CHECKOUT  # no repository, or one that merely contains an installed ltray
    commit = _git(package_dir, "rev-parse", "HEAD")
    if not commit:
        return NOT_A_CHECKOUT
    dirty = _git(package_dir, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return f"{commit}-dirty" if dirty else commit


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def machine() -> str:
    """The machine rank 0 runs on, as a report shows it: host, CPU, cores, memory, GPUs, torch."""
    import torch

    parts = [f"{platform.node()}: {_cpu_model()}, {os.cpu_count()} cores"]
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    parts.append(f"{pages * page_size / 2**30:.0f} GiB")
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts.append(", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names)))
    else:
        parts.append("no GPU")
    parts.append(f"torch {torch.__version__}")
    return ", ".join(parts)
