"""What an epoch's start costs a streamed run: each epoch's loader started as the epoch
begins, against the next epoch's loader started while this epoch's last batches train (what
``ltray train`` does, :meth:`ltray.train.input_path.SplitInput.epoch`'s ``then``).

    python bench/bench_epoch_start.py               # CIFAR-10-LT, batches of 512, 2 workers

The step is a host that waits ``--step-ms`` per batch and computes nothing, as a host does
while the GPU runs its step; epochs are short (CIFAR-10-LT's 12,406 rows in batches of 512:
25 batches), so that several epoch starts fall inside the timed steps. Rounds alternate the
two ways in one run. Each prints images per second and the host's mean wait for an epoch's
first batch; the last line is the ratio of those waits, ahead over at the start (goal: well
under 1). Whether the rate gains depends on what limits it between epoch starts: where the
loader processes already use every core, as on a 2-core machine, starting the next epoch's
early only moves their work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from bench_data import small_set  # noqa: E402 - bench/ is the script's folder, on sys.path
from bench_pipeline import EpochStarts, images_per_s

from ltray.config import DataConfig
from ltray.data import read_manifest
from ltray.train.input_path import open_split


class IdleStep:
    """A step that holds the host ``seconds`` and computes nothing (a GPU step's host)."""

    device = torch.device("cpu")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        time.sleep(self.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="loader processes")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--step-ms", type=float, default=20.0, help="the idle step's length")
    parser.add_argument("--steps", type=int, default=100, help="timed steps a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ltray-bench"))
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    url, described = small_set(args.cache)
    manifest = read_manifest(url)
    data = DataConfig(url=url, image_size=32, augment="cifar", decode="cpu", on_device=False)
    step = IdleStep(args.step_ms / 1000)
    ways = {"started at each epoch": False, "next epoch started ahead": True}
    waits: dict[str, list[float]] = {name: [] for name in ways}
    print(f"{described}: batch {args.batch}, {args.workers} loader workers, a step of "
          f"{args.step_ms:.0f} ms ({args.batch / step.seconds:,.0f} img/s alone)")  # fmt: skip
    for round_ in range(args.rounds):
        for name, ahead in ways.items():
            source = open_split(
                data, manifest, "train", train=True, device=torch.device("cpu"),
                workers=args.workers, batch_size=args.batch, rank=0, world_size=1, seed=0,
            )  # fmt: skip
            feed = EpochStarts(source, ahead)
            rate = images_per_s(step, iter(feed), 5, args.steps, feed.restart_clock)
            waits[name] += feed.waits
            print(f"  round {round_} {name:<26} {rate:8,.0f} img/s   {len(feed.waits)} epoch "
                  f"starts, the host waited {statistics.fmean(feed.waits):.3f} s each "
                  f"({source.num_batches()} batches an epoch)", flush=True)  # fmt: skip
    at_start, ahead = (statistics.fmean(waits[name]) for name in ways)
    print(f"ratio (mean wait for an epoch's first batch, ahead / at the start): "
          f"{ahead / at_start:.2f} ({ahead:.3f} s against {at_start:.3f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
