"""What each part of ltray's GPU step buys: the same model and synthetic batches on the device,
timed with the step's options turned on one after another, in one run, for each loss.

    python bench/bench_step.py                      # CPU: ResNet-32 at batch 32, few steps
    python bench/bench_step.py --device cuda        # GPU: ResNet-32 batch 128, ResNet-50 batch 256
    python bench/bench_step.py --device cuda --compile   # and torch.compile (minutes to compile)

The variants, each adding one option to the one before: ``fp32`` (NCHW, torch's default
SGD: foreach on GPUs), ``+bf16`` (autocast), ``+channels_last``, ``+fused SGD`` (ltray's step on
GPUs), and with ``--compile`` ``+compile`` (``scaling.compile``: the model with its loss). The
step is bench_pipeline.py's: normalise uint8 images, forward, ltray's loss, backward, SGD; the
losses (``--losses``, default ``ce dr``) are timed on the same model, ``dr`` at its defaults
(margin, mhe_s2 uniformity, ring) on a 100-class imbalance-100 split. The last lines are the
ratio of ltray's default step to plain fp32, and what dr's step costs beside ce's.
"""

from __future__ import annotations

import argparse
import itertools

import torch
from bench_pipeline import Step, images_per_s  # noqa: E402 - bench/ is the script's folder

from ltray.config import DataConfig
from ltray.data.profiles import exponential_counts

VARIANTS = {
    "fp32": dict(precision="fp32", channels_last=False, fused=False),
    "+bf16": dict(precision="bf16", channels_last=False, fused=False),
    "+channels_last": dict(precision="bf16", channels_last=True, fused=False),
    "+fused SGD": dict(precision="bf16", channels_last=True, fused=True),
    "+compile": dict(precision="bf16", channels_last=True, fused=True, compile=True),
}
DEFAULT = "+fused SGD"  # what ltray train runs on a GPU
CLASS_COUNTS = exponential_counts(500, 100, 100.0)  # CIFAR-100-LT's split, imbalance 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default per model)")
    parser.add_argument("--compile", action="store_true", help="time torch.compile as well")
    parser.add_argument("--models", nargs="+", default=None, help="resnet32 and/or resnet50")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default per model)")
    parser.add_argument("--losses", nargs="+", default=["ce", "dr"], help="ltray loss names")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    models = args.models or (["resnet32", "resnet50"] if on_gpu else ["resnet32"])
    shapes = {"resnet32": (32, 128 if on_gpu else 32), "resnet50": (224, 256 if on_gpu else 8)}
    variants = {k: v for k, v in VARIANTS.items() if args.compile or k != "+compile"}
    if not on_gpu:  # bf16 autocast, channels_last and fused SGD are GPU options in ltray
        print("on the CPU ltray's step is plain fp32: the variants show what each costs here")
    ratios, loss_costs = [], []
    for arch in models:
        size, batch = shapes[arch]
        batch = args.batch or batch
        steps = args.steps or ((200 if arch == "resnet32" else 40) if on_gpu else 4)
        data = DataConfig(url="", image_size=size)
        fixed = {
            "image": torch.randint(
                0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device
            ),
            "label": torch.randint(0, len(CLASS_COUNTS), (batch,), device=device),
        }
        print(f"\n{arch} at {size} px, batch {batch}, {steps} steps, {device}")
        rates: dict[tuple[str, str], float] = {}
        for loss in args.losses:
            for name, options in variants.items():
                torch.manual_seed(0)
                if options.get("compile"):
                    torch._dynamo.reset()  # each variant compiles afresh, as a run would
                step = Step(arch, CLASS_COUNTS, device, data, loss=loss, **options)
                warmup = 10 if options.get("compile") else max(2, steps // 10)
                rate = images_per_s(step, itertools.repeat(fixed), warmup, steps)
                rates[loss, name] = rate
                share = rate / rates[loss, "fp32"]
                print(f"  {loss:<4} {name:<16} {rate:9.0f} img/s   {share:5.2f} of fp32")
                del step
        for loss in args.losses:
            ratios.append(f"{arch} {loss} {rates[loss, DEFAULT] / rates[loss, 'fp32']:.2f}")
            if loss != args.losses[0]:
                base = args.losses[0]
                costs = [
                    f"{name} {rates[base, name] / rates[loss, name]:.2f}"
                    for name in variants
                    if name in (DEFAULT, "+compile")
                ]
                loss_costs.append(f"{arch} {loss}: " + ", ".join(costs))
    if loss_costs:
        print(f"\nstep time of each loss over {args.losses[0]}'s, at {DEFAULT} and compiled:")
        print("  " + "; ".join(loss_costs))
    print("\nratio (ltray's GPU step / plain fp32): " + "; ".join(ratios))


if __name__ == "__main__":
    main()
