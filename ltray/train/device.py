"""Device, precision and input layout: bf16 autocast and channels_last on GPUs, fp32 on the CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ltray.config import ModelConfig, ScalingConfig
from ltray.errors import LtrayError
from ltray.train.host_reads import HostReads


def wants_gpu(scaling: ScalingConfig) -> bool:
    """``use_gpu: auto`` means: when this machine has one."""
    if scaling.use_gpu == "auto":
        return torch.cuda.is_available()
    if scaling.use_gpu and not torch.cuda.is_available():
        raise LtrayError("scaling.use_gpu is true but no CUDA device is visible")
    return bool(scaling.use_gpu)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def create(cls, device: torch.device, scaling: ScalingConfig, model: ModelConfig) -> Placement:
        on_gpu = device.type == "cuda"
        precision = scaling.precision
        if precision == "auto":
            precision = "bf16" if on_gpu else "fp32"
        dtype = torch.bfloat16 if precision == "bf16" else None
        return cls(device, dtype, on_gpu and model.channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module


class Normalizer:
    """uint8 [B,3,H,W] on the host -> normalised float on the device, in the module's layout."""

    def __init__(self, placement: Placement, mean: Sequence[float], std: Sequence[float]) -> None:
        self.placement = placement
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(mean, device=placement.device).view(shape) * 255.0
        self.std = torch.tensor(std, device=placement.device).view(shape) * 255.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        device = self.placement.device
        images = images.to(device, non_blocking=device.type == "cuda")
        if self.placement.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (images.float() - self.mean) / self.std


class SyncCheck:
    """A check of host synchronisations over a loop, from its ``warmup``-th step on (the first
    steps may synchronise once by design: a lazily initialised buffer, torch.compile's first
    call), with ``mode`` "warn" or "error":

    - on a CUDA device, torch's own (``torch.cuda.set_sync_debug_mode``);
    - elsewhere, ``HostReads``, which catches the operators that would synchronise on a GPU,
      so that a CPU run (CI) finds them too.

    ``paused()`` lifts it around a read the loop makes on purpose. Without a mode it does
    nothing."""

    def __init__(self, device: torch.device, mode: str | None, warmup: int = 2) -> None:
        self.active = mode is not None
        self.on_cuda = device.type == "cuda"
        self.mode = mode
        self.warmup = warmup
        self._reads: HostReads | None = None
        self._started = False
        if self.active and not self.on_cuda:
            self._reads = HostReads(mode)

    def at(self, step: int) -> None:
        """Called at the start of the loop's ``step``-th step (0: the first)."""
        if self.active and step == self.warmup and not self._started:
            self._started = True
            self._switch(on=True)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if not self._started:
            yield
            return
        self._switch(on=False)
        try:
            yield
        finally:
            self._switch(on=True)

    def _switch(self, on: bool) -> None:
        if self.on_cuda:
            torch.cuda.set_sync_debug_mode(self.mode if on else 0)
        elif on:
            self._reads.__enter__()
        else:
            self._reads.__exit__(None, None, None)

    def __enter__(self) -> SyncCheck:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._started = False
            self._switch(on=False)
