"""Does ltray's input keep the step busy? A real training step fed by ltray's pipeline from
Parquet shards, beside the same model and step fed synthetic batches already on the device,
in the same run.

    python bench/bench_pipeline.py                          # CPU: small figures, every machine
    python bench/bench_pipeline.py --device cuda --full     # GPU: ResNet-50 at 224, ResNet-32 at 32

For each model the step (normalise, forward under the run's precision, cross-entropy,
backward, fused SGD on GPUs, channels_last) is timed fed by:

- ``synthetic``: one uint8 batch made on the device once (the step alone: the ceiling);
- ``stream/<decode>``: :func:`ltray.train.input_path.open_split` streaming the shards, decoding
  and augmenting on the GPU (nvjpeg) or in loader processes on the CPU;
- ``device``: the split held on the device (:mod:`ltray.data.stream.device_set`), where it fits.

``auto`` is what a training run picks on this device (for ResNet-50 the streamed feeds only:
a set of ImageNet's size does not fit on the device, so streaming is what such runs use; the
bench's small synthetic set would). The last line is the ratio that
matters: images per second of the pipeline a run picks, over the synthetic feed (goal on a
GPU: 0.95 or better for both models).

The streamed feeds run epoch after epoch, each epoch starting its loader afresh as a run
does. The bench's epochs are short (ResNet-50's photo set: 8 batches, where ImageNet-LT has
452), so for each streamed feed it also prints the host's mean wait for an epoch's first batch
and the rate between those waits: what the restarts cost, and what the flow delivers once
started.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from bench_data import GPU_PHOTOS_PER_CLASS, PHOTO_SIDE, photo_set, small_set  # noqa: E402 - bench/ is the script's folder, on sys.path

from ltray.config import DataConfig, LossConfig, ModelConfig, ScalingConfig
from ltray.data import read_manifest
from ltray.errors import LtrayError
from ltray.losses import build_loss, head_for
from ltray.models import build_model
from ltray.train.device import Normalizer, Placement
from ltray.train.input_path import SplitInput, auto_loader_workers, open_split
from ltray.train.train_module import TrainModule, compile_step

CIFAR_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


class Step:
    """One training step of ``arch`` on uint8 batches: what ``ltray train`` does per batch
    (normalise, model and ``loss`` under autocast, backward, SGD), with its defaults on this
    device (bf16, channels_last and fused SGD on GPUs) unless the keywords say otherwise
    (bench_step.py times each). ``class_counts`` are the training split's, which priors and
    margins of the loss read; ``compile`` is ``scaling.compile``."""

    def __init__(
        self,
        arch: str,
        class_counts: list[int],
        device: torch.device,
        data: DataConfig,
        *,
        loss: str = "ce",
        precision: str = "auto",
        channels_last: bool = True,
        fused: bool | None = None,
        compile: bool = False,
    ) -> None:
        model_cfg = ModelConfig(arch=arch, channels_last=channels_last)
        loss_cfg = LossConfig(name=loss)
        scaling = ScalingConfig(precision=precision)
        self.placement = Placement.create(device, scaling, model_cfg)
        criterion = build_loss(loss_cfg, class_counts)
        criterion.set_epoch(10.0)  # past any warm-up, as most of a run's steps are
        model = build_model(model_cfg, len(class_counts), head=head_for(loss_cfg, model_cfg))
        self.module = self.placement.prepare_module(TrainModule(model, criterion))
        if compile:
            compile_step(self.module)
        fused = device.type == "cuda" if fused is None else fused
        self.optimizer = torch.optim.SGD(
            self.module.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4,
            **({"fused": True} if fused else {}),  # else torch's default: foreach on GPUs
        )  # fmt: skip
        self.normalize = Normalizer(self.placement, data.mean, data.std)
        self.device = device

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        x = self.normalize(images)
        labels = labels.to(self.device, non_blocking=True)
        with self.placement.autocast():
            loss = self.module(x, labels).total
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def images_per_s(
    step: Step,
    batches: Iterator[dict],
    warmup: int,
    steps: int,
    on_start: Callable[[], None] = lambda: None,
) -> float:
    """Steps ``warmup`` batches, then times ``steps`` more (device synchronised at both ends;
    ``on_start`` is called as the timing starts)."""
    sync = torch.cuda.synchronize if step.device.type == "cuda" else (lambda: None)
    for batch in itertools.islice(batches, warmup):
        step(batch["image"], batch["label"])
    sync()
    on_start()
    start, seen = time.perf_counter(), 0
    for batch in itertools.islice(batches, steps):
        step(batch["image"], batch["label"])
        seen += len(batch["label"])
    sync()
    return seen / (time.perf_counter() - start)


class EpochStarts:
    """Batches of epoch 0, 1, ... back to back as a run streams them (each epoch's loader
    started while the epoch before ends; with ``ahead=False``, when the epoch is asked for,
    as ltray did before 2026-11-28), with the host's wait for each epoch's first batch in
    ``waits``, from the last ``restart_clock()`` on. A bench's epochs are a few batches long
    where a data set's are hundreds or thousands: the waits tell what the epoch starts cost
    apart from the flow between them."""

    def __init__(self, source: SplitInput, ahead: bool = True) -> None:
        self.source = source
        self.ahead = ahead
        self.waits: list[float] = []

    def restart_clock(self) -> None:
        self.waits = []

    def __iter__(self) -> Iterator[dict]:
        for epoch in itertools.count():
            then = epoch + 1 if self.ahead else None  # as a run asks
            batches = iter(self.source.epoch(epoch, then=then))
            waited = time.perf_counter()
            first = next(batches, None)
            self.waits.append(time.perf_counter() - waited)
            if first is None:
                return
            yield first
            yield from batches


def bench_model(
    title: str,
    arch: str,
    url: str,
    data: DataConfig,
    batch: int,
    device: torch.device,
    warmup: int,
    steps: int,
    workers: int,
    hold: bool = True,
) -> dict[str, float]:
    started = time.monotonic()
    manifest = read_manifest(url)
    step = Step(arch, manifest.class_counts("train"), device, data)
    size = data.image_size
    fixed = {
        "image": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device),
        "label": torch.randint(0, manifest.num_classes, (batch,), device=device),
    }
    rates = {"synthetic": images_per_s(step, itertools.repeat(fixed), warmup, steps)}
    starts: dict[str, tuple[int, float, float]] = {}  # streamed feed -> epoch starts timed
    feeds = {
        "auto": {},
        "stream/gpu": {"decode": "gpu", "on_device": False},
        "stream/cpu": {"decode": "cpu", "on_device": False},
        "device": {"on_device": True},
    }
    if device.type != "cuda":
        feeds.pop("stream/gpu")  # the same code as stream/cpu's decode, in a thread
    if not hold:  # a set of ImageNet's size is streamed: measure that, not the held copy
        feeds = {k: v for k, v in feeds.items() if k.startswith("stream")}
    for name, options in feeds.items():
        feed_data = data.model_copy(update={"url": url, **options})
        try:
            source = open_split(
                feed_data, manifest, "train", train=True, device=device, workers=workers,
                batch_size=batch, rank=0, world_size=1, seed=0, say=lambda line: None,
            )  # fmt: skip
        except LtrayError as exc:
            print(f"  {name:<12} skipped: {exc}")
            continue
        label = f"{name} ({source.path})" if name == "auto" else name
        feed = EpochStarts(source)
        rates[label] = images_per_s(step, iter(feed), warmup, steps, feed.restart_clock)
        if source.path != "device" and feed.waits:
            seconds = steps * batch / rates[label]
            between = steps * batch / max(seconds - sum(feed.waits), 1e-9)
            starts[label] = (len(feed.waits), statistics.fmean(feed.waits), between)
        print(f"  [{time.monotonic() - started:.0f} s] {title}: {label} measured", flush=True)
    print(f"\n{title}: batch {batch}, {workers} loader workers, {device}")
    base = rates["synthetic"]
    for name, rate in rates.items():
        print(f"  {name:<16} {rate:9.0f} img/s   {rate / base:5.2f} of synthetic")
    for name, (count, wait, between) in starts.items():
        print(f"  {name}: {count} epoch start(s) timed, the host waited {wait:.2f} s each for"
              f" the first batch; between them {between:.0f} img/s, {between / base:.2f} of"
              f" synthetic")  # fmt: skip
    return {name: rate / base for name, rate in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help="ResNet-50 at 224 as well")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default per model)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (auto)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ltray-bench"))
    parser.add_argument("--data", help="a prepared 32 px set for ResNet-32 (default: CIFAR-10-LT)")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    workers = auto_loader_workers(1) if args.workers is None else args.workers
    args.cache.mkdir(parents=True, exist_ok=True)
    ratios: dict[str, dict[str, float]] = {}

    cifar_data = DataConfig(url="", image_size=32, augment="cifar", mean=CIFAR_NORM[0],
                            std=CIFAR_NORM[1])  # fmt: skip
    if args.data:
        url, title = args.data, f"ResNet-32, {args.data}"
    else:
        url, described = small_set(args.cache)
        title = f"ResNet-32, {described}"
    steps = args.steps or (200 if on_gpu else 12)
    batch = 128 if on_gpu else 64
    ratios["resnet32"] = bench_model(
        title, "resnet32", url, cifar_data, batch, device, steps // 4, steps, workers
    )

    if args.full:
        url = photo_set(args.cache, GPU_PHOTOS_PER_CLASS if on_gpu else 4)
        data = DataConfig(url="", image_size=224, augment="imagenet")
        steps = args.steps or (60 if on_gpu else 4)
        ratios["resnet50"] = bench_model(
            f"ResNet-50, synthetic {PHOTO_SIDE} px JPEG at 224", "resnet50", url, data,
            256 if on_gpu else 16, device, max(5, steps // 4), steps, workers, hold=False,
        )  # fmt: skip

    parts = []
    for model, by_feed in ratios.items():
        auto = next((k for k in by_feed if k.startswith("auto")), None)
        if auto is not None:
            parts.append(f"{model} {auto} {by_feed[auto]:.2f}")
        if "stream/gpu" in by_feed:
            parts.append(f"{model} stream/gpu {by_feed['stream/gpu']:.2f}")
    print("\nratio (pipeline / synthetic, goal >= 0.95 on a GPU): " + "; ".join(parts))


if __name__ == "__main__":
    main()
