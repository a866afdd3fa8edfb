"""Images/s of ``ltray train`` with 1 and 2 Ray Train workers on the same data.

    python bench/bench_scaling.py                                   # CPU: batch 32 a worker
    python bench/bench_scaling.py --use-gpu --batch-size 128 --steps 100 --loader-workers 4

Trains jobs/cifar10_lt.yaml (ResNet-32, cross-entropy) on the set of bench/ray_benchmarks.py
(CIFAR-10-LT IF 100, or a generated one of the same size) the way ``ltray train`` does
(``ltray.train.launcher.run_job`` on a local Ray, one ``TorchTrainer`` per worker count), each
run fresh in a temporary storage folder, MLflow off, --epochs epochs of --steps steps capped
with ``schedule.max_steps_per_epoch`` (test evaluation capped at one batch). ``--batch-size`` is
per worker, as in ltray's jobs: two workers train on twice the images per step, and the run's
``train/images_per_s`` counts the images of all workers (summed over ranks) over the epoch's
training loop.

Prints each run's ``train/images_per_s`` per epoch, read back from the history its last
checkpoint holds; the figure of a run is the median of its epochs after the first (the first
pays for the workers' start-up: the data set's first reads, torch's first steps). Last, the ratio
of the two runs and the efficiency per worker (ratio / 2). Without Ray installed it says so and
exits 0.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_benchmarks import prepared_set, skipped_without_ray  # noqa: E402

JOB = Path(__file__).resolve().parents[1] / "jobs" / "cifar10_lt.yaml"


def epoch_rates(url: str, storage: str, workers: int, args: argparse.Namespace) -> list[float]:
    """``train/images_per_s`` of each epoch of one fresh run with ``workers`` Ray workers."""
    from ltray import fs
    from ltray.analysis.evaluation import find_checkpoint
    from ltray.config import load_job
    from ltray.train.checkpoint import load_state
    from ltray.train.launcher import run_job

    overrides = {
        "name": f"bench-scaling-{workers}",
        "data.url": url,
        "data.loader_workers": args.loader_workers,
        "optim.batch_size": args.batch_size,
        "schedule.epochs": args.epochs,
        "schedule.max_steps_per_epoch": args.steps,
        "schedule.max_eval_batches": 1,
        "scaling.num_workers": workers,
        "scaling.use_gpu": str(args.use_gpu).lower(),
        "storage.url": storage,
        "tracking.uri": "none",
    }
    job = load_job(JOB, [f"{key}={value}" for key, value in overrides.items()])
    result = run_job(job, fresh=True)
    state = load_state(
        io.BytesIO(fs.read_bytes(find_checkpoint(fs.join_url(storage, result.run_name))))
    )
    return [record["train/images_per_s"] for record in state["history"]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="the first is not counted")
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    parser.add_argument("--batch-size", type=int, default=32, help="images per worker per step")
    parser.add_argument("--loader-workers", type=int, default=1, help="per Ray worker")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per Ray worker")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ltray-bench"))
    args = parser.parse_args(argv)
    if skipped_without_ray("bench_scaling"):
        return
    import ray

    from ltray.cli.console import quiet_unless

    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not counted")
    args.cache.mkdir(parents=True, exist_ok=True)
    url, title = prepared_set(args.cache)
    device = "one GPU" if args.use_gpu else "CPU"
    print(
        f"{title}; ResNet-32, batch {args.batch_size} a worker, {args.steps} steps an epoch, "
        f"{args.loader_workers} loader worker(s) each, {device} a worker"
    )
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="ltray-bench-scaling-") as storage:
        with quiet_unless(False):
            for workers in (1, 2):
                epochs = epoch_rates(url, storage, workers, args)
                rates[workers] = statistics.median(epochs[1:])
                shown = ", ".join(f"{rate:,.0f}" for rate in epochs)
                print(
                    f"  {workers} worker(s): {rates[workers]:,.0f} img/s "
                    f"(median of epochs 1-{len(epochs) - 1}; every epoch: {shown})",
                    flush=True,
                )
        ray.shutdown()
    ratio = rates[2] / rates[1]
    print(f"ratio 2 workers/1 worker = {ratio:.2f} (per-worker efficiency {ratio / 2:.2f})")


if __name__ == "__main__":
    main()
