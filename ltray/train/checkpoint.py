"""The checkpoint: one dict in one file, loaded with ``weights_only=True``.

It holds everything that makes a resumed run end where an uninterrupted one ends: model,
optimiser, loss parameters, scaler, epoch, data-stream position, RNG state, the metric history
(so tracking can fill in what a crash kept it from logging) and the MLflow run id.

``epoch`` is the last finished epoch (-1 before the first); ``stream`` = {epoch, batch,
loader_workers} is where training resumes: batch 0 of the next epoch after an epoch's end, or
the batch after a mid-epoch checkpoint, read with the loader workers that epoch began with (the
batch order depends on their number). ``partial`` holds a mid-epoch checkpoint's running sums
of the epoch's loss terms over all ranks, so the resumed epoch's metrics are the whole epoch's.
"""

from __future__ import annotations

from typing import IO, Any

import torch

CHECKPOINT_FILE = "state.pt"
FORMAT_VERSION = 1


def save_state(state: dict[str, Any], file: IO[bytes]) -> None:
    torch.save({"format": FORMAT_VERSION, **state}, file)


def load_state(file: IO[bytes]) -> dict[str, Any]:
    state = torch.load(file, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint format {state.get('format')!r}, expected {FORMAT_VERSION}")
    return state
