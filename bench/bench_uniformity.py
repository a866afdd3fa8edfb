"""Cost of the uniformity term against a ResNet-50 training step, measured in the same run.

    python bench/bench_uniformity.py                   # CPU: fp32, ResNet-50 at batch 8, 224 px
    python bench/bench_uniformity.py --device cuda     # GPU: bf16 autocast, channels_last, 256

Times forward + backward of ltray's blocked uniformity term and of the naive masked version
(full C x C Gram matrix, boolean mask) on a C x d classifier, and one SGD step of ResNet-50
on synthetic data already on the device, and prints each term as a fraction of the step.

Then what a user pays: a ResNet-50 step with a C-class cosine head and cross-entropy on its
scaled cosines, timed without and with the term added to the loss (the two alternate, call by
call). On a GPU the host queues the term's kernels while the device still runs the model's,
so its cost in the step can be below its cost alone; the last line is that in-step share.
The model step follows the project's "auto" precision: bf16 autocast on GPUs, fp32 on the CPU.
The Gram's matmuls run in ltray's ``auto`` precision (bf16x3 on GPUs from 2,048 classes, fp32
otherwise) or in
the one ``--gram`` names (``loss.uniformity.gram_dtype``).

``--profile`` adds where the term's time goes at the largest C: the rate of one row block's
matmul in each precision (one bf16 product summed in fp32; bf16x3's three, as ltray runs them
and as one product of thrice the depth; bf16 out; fp32), one bf16 product of the Gram and of
the pull at C padded to a multiple of 8 (as the term runs them) and at C itself, and the
profiler's table of the ops of one forward + backward.
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
from ltray.losses import uniformity
from ltray.losses.uniformity import (
    GRAM_PRECISIONS,
    resolve_gram,
    uniformity_loss,
    uniformity_loss_naive,
)
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


def timed_pair(
    first: Callable[[], None],
    second: Callable[[], None],
    device: torch.device,
    repeats: int,
    warmup: int,
) -> tuple[float, float]:
    """Median wall times of two calls in ms, measured alternately, so that a machine's drift
    (clocks, other load) falls on both."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times, strict=True):
            out.append(timed(fn, device, 1, 0))
    return statistics.median(times[0]), statistics.median(times[1])


def resnet50_step(
    device: torch.device,
    batch: int,
    size: int,
    classes: int = 1000,
    head: str = "linear",
    extra: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[], None]:
    """One SGD step of ResNet-50 on a fixed synthetic batch: cross-entropy on the logits of a
    linear head, or on 16 x the cosines of a cosine head, plus ``extra(head weight)``."""
    model = build_model(ModelConfig(arch="resnet50"), classes, head=head).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scale = 16.0 if head == "cosine" else 1.0

    def step() -> None:
        with autocast(device):
            loss = F.cross_entropy(scale * model(images).logits.float(), labels)
            if extra is not None:
                loss = loss + extra(model.head.weight)
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


def profile_term(
    step: Callable[[], None], classes: int, dim: int, block_rows: int, device: torch.device
) -> None:
    """One row block's matmul in each precision (TFLOP/s), then the profiler's top ops of
    ``step`` (one forward + backward of the term)."""
    rows = min(block_rows, classes)
    width = classes + -classes % uniformity.ALIGN  # the loop pads the rows to this many
    a = torch.randn(rows, dim, device=device)
    b = torch.randn(width, dim, device=device).T  # as the loop: the onward rows, transposed
    split_a, split_b = uniformity._Operand.of(a, "bf16x3"), uniformity._Operand.of(b, "bf16x3")
    (hi_a, lo_a), (hi_b, lo_b) = split_a.parts, split_b.parts  # hi: the bf16 rounding
    # bf16x3's three products as one of thrice the depth: [hi lo hi] . [hi hi lo]^T; whether
    # one long product runs nearer the card's rate than three and two sums is what this asks
    deep_a = torch.cat([hi_a, lo_a, hi_a], dim=1)
    deep_b = torch.cat([hi_b, hi_b, lo_b], dim=0)
    products = {
        "bf16 products, fp32 sums (bf16x3's each)": lambda: uniformity._mm_fp32_out(hi_a, hi_b),
        "bf16x3 as ltray runs it: 3 products": lambda: split_a @ split_b,
        "bf16x3 as one product, depth 3d": lambda: uniformity._mm_fp32_out(deep_a, deep_b),
        "bf16 out (gram=bf16)": lambda: hi_a @ hi_b,
        "fp32 (gram=fp32)": lambda: a @ b,
    }
    flop = 2 * rows * dim * width  # the fp32 product's; bf16x3 does three of them
    print(f"one row block's Gram, {rows} x {dim} @ {dim} x {width} (TFLOP/s of that product):")
    for name, fn in products.items():
        ms = timed(fn, device, 10, 2)
        print(f"  {name:<42} {ms:7.3f} ms  {flop / ms / 1e9:7.1f} TFLOP/s")
    # the padding's reason: one bf16 product of the Gram, and of the pull (phi' [rows, width] @
    # the rows), at the padded width and, as before the padding, at C itself
    print(f"  padded to {width} columns against {classes} (one bf16 product, fp32 sums):")
    for cols in dict.fromkeys((width, classes)):
        hi_rows = hi_b.T[:cols]  # [cols, dim], row-major
        dphi = torch.randn(rows, cols, device=device).to(torch.bfloat16)
        for name, fn in (
            ("Gram block", lambda r=hi_rows: uniformity._mm_fp32_out(hi_a, r.T)),
            ("pull", lambda r=hi_rows, p=dphi: uniformity._mm_fp32_out(p, r)),
        ):
            ms = timed(fn, device, 10, 2)
            rate = 2 * rows * dim * cols / ms / 1e9
            label = f"{name} at {cols} columns"
            print(f"    {label:<40} {ms:7.3f} ms  {rate:7.1f} TFLOP/s")
    three, deep = split_a @ split_b, uniformity._mm_fp32_out(deep_a, deep_b)
    exact = a.double() @ b.double()
    largest = exact.abs().max()
    apart = ((deep - three).abs().max() / largest).item()
    print(f"  the two bf16x3 forms differ by {apart:.1e} of the largest entry (summation order);")
    errors = {"3 products": three, "one product": deep, "fp32": a @ b}
    print("  off fp64 by, of the largest entry: " + ", ".join(
        f"{name} {((value.double() - exact).abs().max() / largest).item():.1e}"
        for name, value in errors.items()
    ))  # fmt: skip
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort = "cpu_time_total"
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort = "self_device_time_total"
    step()
    with torch.profiler.profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    print(f"profile of one forward + backward at C = {classes}, by {sort}:")
    print(prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=50))


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
        "--gram",
        choices=GRAM_PRECISIONS,
        default="auto",
        help="the Gram matmuls' precision (auto: bf16x3 on GPUs, fp32 on the CPU)",
    )
    parser.add_argument("--batch", type=int, help="ResNet-50 batch (default: 256 GPU, 8 CPU)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, help="timed calls (default: 20 GPU, 3 CPU)")
    parser.add_argument("--profile", action="store_true", help="where the time goes, largest C")
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
    grams = ", ".join(f"{resolve_gram(args.gram, device, c)} at C = {c}" for c in args.classes)
    print(
        f"uniformity {args.kind}, d = {args.dim}, fwd+bwd, block_rows {args.block_rows}, "
        f"fused {'on' if fusion else 'off'}, Gram {grams}"
    )

    def ours_fn(w: torch.Tensor) -> torch.Tensor:
        return uniformity_loss(
            w, args.kind, block_rows=args.block_rows, gram=args.gram, fused=fused
        )

    header = ("C", "ours ms", "naive ms", "ours/step", "naive/step", "speed-up")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 9, 9, 10, 11, 9), strict=True)))
    for classes in args.classes:
        weight = torch.randn(classes, args.dim, device=device, requires_grad=True)
        ours = timed(uniformity_step(ours_fn, weight, device), device, repeats, warmup)
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
        if args.profile and classes == max(args.classes):
            profile_term(
                uniformity_step(ours_fn, weight, device), classes, args.dim, args.block_rows,
                device,
            )  # fmt: skip
        del weight
    print(
        f"in the step: ResNet-50 with a C-class cosine head, batch {batch}, cross-entropy on its "
        f"scaled cosines, without and with 0.1 x the term ({repeats} alternating calls)"
    )
    header = ("C", "step ms", "with term", "term ms", "term/step")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 9, 10, 8, 10), strict=True)))
    shares = []
    for classes in args.classes:
        plain = resnet50_step(device, batch, args.image_size, classes, "cosine")
        with_term = resnet50_step(
            device, batch, args.image_size, classes, "cosine", lambda w: 0.1 * ours_fn(w)
        )
        base_ms, total_ms = timed_pair(plain, with_term, device, repeats, warmup)
        shares.append((classes, (total_ms - base_ms) / base_ms))
        print(
            f"{classes:>6} {base_ms:>9.1f} {total_ms:>10.1f} {total_ms - base_ms:>8.1f} "
            f"{shares[-1][1]:>9.1%}"
        )
        del plain, with_term
        if on_gpu:
            torch.cuda.empty_cache()
    classes, share = shares[-1]
    goal = "goal on a GPU: under 3%"
    print(f"ratio: the term's share of the step at C = {classes} ({goal}): {share:.1%}")


if __name__ == "__main__":
    main()
