"""JPEG decode: torchvision.io (what ltray uses) against TorchCodec, on the same bytes.

    python bench/bench_decode.py                    # CPU: one image at a time, one thread
    python bench/bench_decode.py --device cuda      # GPU: nvjpeg, batches of 256, both libraries

torchvision 0.29 deprecates its image codecs in favour of TorchCodec (``torchcodec.decoders``,
0.16 and later); ltray decodes with torchvision.io on both paths. This measures both libraries
on the JPEGs of two prepared sets: 32 px (CIFAR-10-LT from ../shared/data's archive, else a
synthetic set) and a synthetic set of 400 px photos' size (the one bench_pipeline.py --full
uses). On the CPU: images/s of a loop of ``decode_jpeg`` calls; on a GPU: images/s of
``decode_jpeg(list of 256, device="cuda")``, the device synchronised around each batch. Each
figure is the median of 3 passes. It also says whether the two decode to the same pixels. The
last line is TorchCodec's rate over torchvision's (above 1: TorchCodec is faster). Without
TorchCodec (``pip install torchcodec``; it needs a torch of its own release) it says so and
measures torchvision alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torchvision.io as tvio
from bench_data import PHOTO_SIDE, photo_set, small_set  # noqa: E402 - bench/ is the script's folder, on sys.path

Decoder = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def encoded(url: str, limit: int) -> list[torch.Tensor]:
    """Up to ``limit`` encoded images of the set's train split, as uint8 tensors."""
    out: list[torch.Tensor] = []
    for shard in sorted((Path(url) / "train").glob("*.parquet")):
        for data in pq.read_table(shard, columns=["image"]).column("image").to_pylist():
            out.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            if len(out) == limit:
                return out
    return out


def torchcodec_decoder(device: torch.device) -> tuple[Decoder | None, str]:
    """TorchCodec's decode_jpeg on ``device``, or None and why not."""
    try:
        from torchcodec import __version__
        from torchcodec.decoders import decode_jpeg
    except Exception as exc:  # not installed, or built for another torch (an OSError)
        return None, f"not usable here: {type(exc).__name__}: {str(exc)[:160]}"
    if device.type == "cuda":
        return (lambda batch: decode_jpeg(batch, device=device)), __version__
    return (lambda batch: [decode_jpeg(data) for data in batch]), __version__


def torchvision_decoder(device: torch.device) -> Decoder:
    rgb = tvio.ImageReadMode.RGB
    if device.type == "cuda":
        return lambda batch: tvio.decode_jpeg(batch, mode=rgb, device=device)
    return lambda batch: [tvio.decode_jpeg(data, mode=rgb) for data in batch]


def images_per_s(decode: Decoder, images: list[torch.Tensor], batch: int, device) -> float:
    """Median images/s of 3 passes over ``images`` in batches of ``batch``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    decode(images[:batch])  # warm-up: nvjpeg's handles, the allocator
    rates = []
    for _ in range(3):
        sync()
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            decode(images[i : i + batch])
        sync()
        rates.append(len(images) / (time.perf_counter() - start))
    return statistics.median(rates)


def default_sets(cache: Path, on_gpu: bool) -> list[tuple[str, str, int]]:
    """(name, url, images to decode) of the 32 px set and the photo-size one, the sets
    bench_pipeline.py uses (shared through --cache)."""
    small, _ = small_set(cache)
    large = photo_set(cache, 20 if on_gpu else 4)
    return [("32 px", small, 8192 if on_gpu else 4000), (f"{PHOTO_SIDE} px", large, 2000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ltray-bench"))
    parser.add_argument("--images", type=int, default=0, help="images a set (default per set)")
    parser.add_argument("--data", help="measure this prepared set only (instead of the two)")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")
    if args.data:
        sets = [(Path(args.data).name, args.data, 4000)]
    else:
        sets = default_sets(args.cache, on_gpu)
    codec, version = torchcodec_decoder(device)
    print(f"device: {device}; torch {torch.__version__}; torchcodec {version}")
    batch = 256 if on_gpu else 1
    ratios = []
    for name, url, count in sets:
        images = encoded(url, args.images or count)
        ours = torchvision_decoder(device)
        rate = images_per_s(ours, images, batch, device)
        line = f"{name}, {len(images)} JPEGs: torchvision {rate:,.0f} img/s"
        if codec is not None:
            theirs = images_per_s(codec, images, batch, device)
            sample = images[:16]
            same = all(
                torch.equal(a.cpu(), b.cpu())
                for a, b in zip(ours(sample), codec(sample), strict=True)
            )
            line += f", torchcodec {theirs:,.0f} img/s, same pixels: {same}"
            ratios.append(f"{name} {theirs / rate:.2f}")
        print(line)
    if ratios:
        print(f"ratio (torchcodec / torchvision on {device.type}): " + "; ".join(ratios))
    else:
        print("ratio: none (torchcodec not usable here, torchvision alone measured)")


if __name__ == "__main__":
    main()
