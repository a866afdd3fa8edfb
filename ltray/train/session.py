"""Where the loop meets its runner: Ray Train, or the calling process with ``--local``.

The loop sees one small interface: its rank and world size, the last checkpoint to resume from,
and ``report(metrics, state)`` at the end of an epoch (and every few steps inside one). When
``report`` returns with a state, that checkpoint is durable: a restart resumes from it or a
later one, so what the loop logs after it is never redone. ``RaySession`` is the only code in
ltray that calls ``ray.train``; ``LocalSession`` writes the same checkpoint file through fsspec.
"""

from __future__ import annotations

import io
import os
import socket
import tempfile
import time
from typing import Any, Protocol

from ltray.train.checkpoint import CHECKPOINT_FILE, load_state, save_state
from ltray.train.storage import Storage


class Session(Protocol):
    rank: int
    world_size: int
    local_rank: int
    node: str  # where this worker runs: Ray's node id, or the host name

    def latest_state(self) -> dict[str, Any] | None: ...

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None: ...


def checkpoint_name(state: dict[str, Any]) -> str:
    """``checkpoint_EEEEEE_BBBBBB``: the stream position it resumes at, so names sort in order;
    the finished run's (the same position as its last epoch's) ends in ``_final``."""
    stream = state["stream"]
    name = f"checkpoint_{int(stream['epoch']):06d}_{int(stream['batch']):06d}"
    return name + "_final" if state.get("final") else name


class LocalSession:
    """One process, no Ray: checkpoints go to ``{storage}/{run}/local/checkpoint_EEEEEE_BBBBBB``
    (the stream position: epoch, batch)."""

    rank = 0
    world_size = 1
    local_rank = 0
    node = socket.gethostname()

    def __init__(self, storage: Storage, run_name: str, keep: int) -> None:
        self.storage = storage
        self.folder = f"{run_name}/local"
        self.keep = keep

    def _checkpoints(self) -> list[str]:
        names = [n for n in self.storage.list(self.folder) if n.startswith("checkpoint_")]
        complete = [n for n in names if self.storage.exists(f"{self.folder}/{n}/{CHECKPOINT_FILE}")]
        return sorted(complete)

    def latest_state(self) -> dict[str, Any] | None:
        names = self._checkpoints()
        if not names:
            return None
        data = self.storage.read_bytes(f"{self.folder}/{names[-1]}/{CHECKPOINT_FILE}")
        return load_state(io.BytesIO(data))

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is None:
            return
        buffer = io.BytesIO()
        save_state(state, buffer)
        name = checkpoint_name(state)
        self.storage.write_bytes(f"{self.folder}/{name}/{CHECKPOINT_FILE}", buffer.getvalue())
        for old in self._checkpoints()[: -self.keep]:
            self.storage.remove(f"{self.folder}/{old}")


class RaySession:
    """Inside a Ray Train worker: Ray persists checkpoints to the run's storage and restores them
    after a worker failure or when the same job is submitted again."""

    def __init__(self) -> None:
        import ray
        import ray.train

        self._train = ray.train
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.local_rank = context.get_local_rank()
        self.node = ray.get_runtime_context().get_node_id()

    def latest_state(self) -> dict[str, Any] | None:
        checkpoint = self._train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            with open(os.path.join(folder, CHECKPOINT_FILE), "rb") as f:
                return load_state(f)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Every rank reports (Ray's report is collective); rank 0 attaches the checkpoint and
        waits until Ray's controller has registered it: the worker's own report returns once
        the files are uploaded, but a worker killed before the controller took the report from
        its queue would be restored from the checkpoint before."""
        if state is None or self.rank != 0:
            self._train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, CHECKPOINT_FILE), "wb") as f:
                save_state(state, f)
            checkpoint = self._train.Checkpoint.from_directory(folder)
            # the position sorts the names; the time keeps a position reported again (by an
            # attempt restored from before it) from reusing a folder Ray may still delete
            name = f"{checkpoint_name(state)}-{time.time_ns()}"
            self._train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        self._train.get_all_reported_checkpoints(
            consistency_mode=self._train.CheckpointConsistencyMode.COMMITTED
        )
