"""Cost of the uniformity term against a ResNet-50 training step, measured in the same run.

    python bench/bench_uniformity.py                   # CPU: fp32, ResNet-50 at batch 8, 224 px
    python bench/bench_uniformity.py --device cuda     # GPU: bf16 autocast, channels_last, 256

Times forward + backward of ltray's blocked uniformity term and of the naive masked version
(full C x C Gram matrix, boolean mask) on a C x d classifier, and one SGD step of ResNet-50
on synthetic data already on the device, and prints each term as a fraction of the step.
The model step follows the project's "auto" precision: bf16 autocast on GPUs, fp32 on the CPU.
The uniformity Gram runs in fp32 (ltray's default) or, with ``--gram bf16``, in bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ltray.config import ModelConfig
from ltray.losses.uniformity import uniformity_loss, uniformity_loss_naive
from ltray.models import build_model


def timed(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` in ms, with the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resnet50_step(device: torch.device, batch: int, size: int) -> Callable[[], None]:
    """One SGD step of ResNet-50 (1,000 classes) on a fixed synthetic batch."""
    model = build_model(ModelConfig(arch="resnet50"), 1000).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        with autocast(device):
            loss = F.cross_entropy(model(images).logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def uniformity_step(
    fn: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor, device: torch.device
) -> Callable[[], None]:
    def step() -> None:
        weight.grad = None
        with autocast(device):
            loss = fn(weight)
        loss.backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 8142])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--kind", default="mhe_s2")
    parser.add_argument("--block-rows", type=int, default=1024)
    parser.add_argument(
        "--fused",
        choices=["auto", "on", "off"],
        default="auto",
        help="torch.compile the per-block elementwise pass (auto: on CUDA only)",
    )
    parser.add_argument(
        "--gram", choices=["fp32", "bf16"], default="fp32", help="the Gram matmul's precision"
    )
    parser.add_argument("--batch", type=int, help="ResNet-50 batch (default: 256 GPU, 8 CPU)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, help="timed calls (default: 20 GPU, 3 CPU)")
    args = parser.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (256 if on_gpu else 8)
    repeats = args.repeats or (20 if on_gpu else 3)
    warmup = 3 if on_gpu else 1
    fused = {"auto": None, "on": True, "off": False}[args.fused]
    torch.manual_seed(0)

    step_ms = timed(resnet50_step(device, batch, args.image_size), device, repeats, warmup)
    precision = "bf16 autocast" if on_gpu else "fp32"
    name = (
        torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {name}; torch {torch.__version__}; {precision}")
    print(f"ResNet-50 step, batch {batch} at {args.image_size} px: {step_ms:.1f} ms")
    fusion = on_gpu if fused is None else fused
    print(
        f"uniformity {args.kind}, d = {args.dim}, fwd+bwd, block_rows {args.block_rows}, "
        f"fused {'on' if fusion else 'off'}, Gram {args.gram}"
    )
    gram = torch.bfloat16 if args.gram == "bf16" else None
    header = ("C", "ours ms", "naive ms", "ours/step", "naive/step", "speed-up")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 9, 9, 10, 11, 9), strict=True)))
    for classes in args.classes:
        weight = torch.randn(classes, args.dim, device=device, requires_grad=True)
        ours = timed(
            uniformity_step(
                lambda w: uniformity_loss(
                    w, args.kind, block_rows=args.block_rows, gram_dtype=gram, fused=fused
                ),
                weight,
                device,
            ),
            device,
            repeats,
            warmup,
        )
        naive = timed(
            uniformity_step(lambda w: uniformity_loss_naive(w, args.kind), weight, device),
            device,
            repeats,
            warmup,
        )
        print(
            f"{classes:>6} {ours:>9.1f} {naive:>9.1f} {ours / step_ms:>9.1%} "
            f"{naive / step_ms:>10.1%} {naive / ours:>8.2f}x"
        )


if __name__ == "__main__":
    main()
