"""What bench_stream.py and bench_scaling.py share: the skip where Ray is not installed (the GPU
box has none), and the data set, prepared once under a cache folder with ``ltray prepare``:
CIFAR-10-LT (IF 100) from ../shared/data's archive where it is, else a generated set of the same
size (``ltray prepare synthetic``, 32 px JPEG, 12,406 train rows).

Shards are small (``--shard-mb``, 1 MiB by default: 11 train shards for CIFAR-10-LT) so that a
reader that splits its work by file has files to spread over its CPUs (the default 128 MiB would
put CIFAR's 11 MB in one shard). ltray's reader streams row groups, so the layout costs it
nothing; both readers read the same files.
"""

from __future__ import annotations

from pathlib import Path

from bench_data import CIFAR, dataset


def skipped_without_ray(script: str) -> bool:
    """True, having said so, where Ray cannot be imported: the script then exits 0."""
    try:
        import ray  # noqa: F401
    except ImportError:
        print(f"{script}: skipped: ray is not installed")
        return True
    return False


def ltray_prepare(args: list[str]) -> None:
    """``ltray prepare ARGS`` in this process, as the user types it."""
    from ltray.cli import app

    app(["prepare", *args], standalone_mode=False)


def prepared_set(
    cache: Path, shard_mb: float = 1.0, synthetic_rows: int | None = None
) -> tuple[str, str]:
    """(URL, title) of the shared set, built once under ``cache``; ``synthetic_rows``: a
    generated balanced set of that many train rows instead (longer epochs)."""
    shards = ["--shard-mb", f"{shard_mb:g}"]
    if synthetic_rows:
        per_class = max(1, synthetic_rows // 10)
        name = f"synthetic-{per_class * 10}-{shard_mb:g}mb"
        title = f"synthetic, balanced, {per_class * 10:,} rows (32 px JPEG)"
        args = ["synthetic", "--n-max", str(per_class), "--imbalance", "1"]
    elif CIFAR.is_file():
        name, title = f"cifar10-lt-100-{shard_mb:g}mb", "CIFAR-10-LT IF 100 (32 px JPEG)"
        args = ["cifar-lt", str(CIFAR), "--imbalance", "100"]
    else:
        name, title = f"synthetic-lt-100-{shard_mb:g}mb", "synthetic LT IF 100 (32 px JPEG)"
        args = ["synthetic", "--n-max", "5000", "--imbalance", "100"]
    url = dataset(cache, name, lambda out: ltray_prepare([*args, out, *shards]))
    return url, title
