"""The operators that make the host wait for a GPU, caught on any device.

torch's own check (``torch.cuda.set_sync_debug_mode``) sees synchronisations only where they
happen, on a CUDA device. ``HostReads`` catches their causes at the dispatcher, on the CPU as
well, so a CPU run (CI) finds what would stall a GPU's queue:

- a value read back to Python: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``;
- an output whose size depends on the data: ``nonzero``, ``masked_select``, boolean indexing,
  ``unique``, ``repeat_interleave`` without ``output_size``;
- ``torch.equal``, which answers a Python bool;
- a tensor made from Python data (``torch.tensor(x)``, ``t.new_tensor(x)``) by the step's
  code: on a GPU, a copy from pageable host memory. The input pipeline (``ltray.data``) makes
  its batches on the host by design, so its own are not reported.

Copies of device tensors to the host (``.cpu()``) are not seen on the CPU, where they do not
dispatch; torch's check covers them on GPUs.
"""

from __future__ import annotations

import traceback
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ltray.errors import LtrayError

aten = torch.ops.aten
_READS = {
    aten._local_scalar_dense.default: "reads a value back to Python (.item(), float(), bool())",
    aten.is_nonzero.default: "reads a value back to Python (bool(tensor))",
    aten.equal.default: "reads a value back to Python (torch.equal)",
    aten.nonzero.default: "has a data-dependent size (nonzero)",
    aten.masked_select.default: "has a data-dependent size (masked_select)",
    aten._unique2.default: "has a data-dependent size (unique)",
    aten.unique_consecutive.default: "has a data-dependent size (unique_consecutive)",
    aten.unique_dim.default: "has a data-dependent size (unique)",
    aten.repeat_interleave.Tensor: "has a data-dependent size (repeat_interleave)",
}
_FROM_PYTHON = aten.lift_fresh.default
_PACKAGE = Path(__file__).resolve().parents[1]
_TORCH = Path(torch.__file__).resolve().parent
_HOST_SIDE = _PACKAGE / "data"  # builds batches on the host, by design
_HERE = Path(__file__).resolve()


def _cause(func: torch._ops.OpOverload, args: tuple) -> str | None:
    """Why ``func`` on ``args`` would make the host wait for the device, or None."""
    if func in _READS:
        return _READS[func]
    if func is aten.index.Tensor:
        indices = args[1] if len(args) > 1 else ()
        if any(i is not None and i.dtype == torch.bool for i in indices):
            return "has a data-dependent size (boolean indexing)"
    if func is _FROM_PYTHON:
        return "makes a tensor from Python data (a host-to-device copy on a GPU)"
    return None


def _caller() -> traceback.FrameSummary | None:
    """The innermost frame outside torch and this module: the line that asked for the read."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        if path != _HERE and not path.is_relative_to(_TORCH):
            return frame
    return None


class HostReads(TorchDispatchMode):
    """While active, each operator that would make the host wait for a GPU is reported with
    the line of ltray that called it: a warning (``mode="warn"``, once per line) or an
    ``LtrayError`` (``mode="error"``)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("warn", "error"):
            raise LtrayError(f"host-read check: mode must be 'warn' or 'error', got {mode!r}")
        self.mode = mode
        self.seen: dict[str, str] = {}  # caller -> cause

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        cause = _cause(func, args)
        if cause is not None:
            frame = _caller()
            where = Path(frame.filename).resolve() if frame else None
            if func is _FROM_PYTHON and where is not None and where.is_relative_to(_HOST_SIDE):
                return func(*args, **(kwargs or {}))
            caller = f"{frame.filename}:{frame.lineno} ({frame.name})" if frame else "torch"
            message = f"host read inside the step loop: {func.name()} {cause}, at {caller}"
            if self.mode == "error":
                raise LtrayError(message)
            if caller not in self.seen:
                self.seen[caller] = cause
                warnings.warn(message, stacklevel=2)
        return func(*args, **(kwargs or {}))
