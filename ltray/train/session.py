"""Where the loop meets its runner: Ray Train, or the calling process with ``--local``.

The loop sees one small interface: its rank and world size, the last checkpoint to resume from,
and ``report(metrics, state)`` at the end of an epoch (and every few steps inside one). When
``report`` returns with a state, that checkpoint is durable: a restart resumes from it or a
later one, so what the loop logs after it is never redone. ``RaySession`` is the only code in
ltray that calls ``ray.train``; ``LocalSession`` writes the same checkpoint file through fsspec.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Protocol

from ltray.logs import from_ltray
from ltray.train.checkpoint import CHECKPOINT_FILE, load_state, save_state
from ltray.train.storage import Storage

LOCAL_FOLDER = "local"  # a --local run's checkpoints: RUN/local/checkpoint_*
# in rank 0's reports on Ray: the placement group holding the run's workers, so that a sweep
# can remove it when Tune stops the trial from outside (Ray then leaves it behind)
PLACEMENT_GROUP_KEY = "ray/placement_group"


class Session(Protocol):
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int  # training processes on this node (they share its CPUs)
    node: str  # where this worker runs: Ray's node id, or the host name

    def latest_state(self) -> dict[str, Any] | None: ...

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None: ...

    def say(self, line: str) -> None:
        """One line for the user's console (progress, a note about the run)."""
        ...


def say(line: str) -> None:
    """One line on stdout. Not ``print``: Ray Train patches that into its logger and, with
    stdout wrapped as it is in a worker, the line would show twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


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
    local_world_size = 1
    node = socket.gethostname()

    def __init__(self, storage: Storage, run_name: str, keep: int) -> None:
        self.storage = storage
        self.folder = f"{run_name}/{LOCAL_FOLDER}"
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

    def say(self, line: str) -> None:
        say(line)


class RaySession:
    """Inside a Ray Train worker: Ray persists checkpoints to the run's storage and restores them
    after a worker failure or when the same job is submitted again.

    ``console``, the launcher's :class:`ConsoleRelay` queue, carries ``say``'s lines to the
    driver: a worker's own stdout goes to Ray's log files."""

    def __init__(self, console: Any = None) -> None:
        import ray
        import ray.train

        self._train = ray.train
        self._console = console
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.local_rank = context.get_local_rank()
        self.local_world_size = context.get_local_world_size()
        self.node = ray.get_runtime_context().get_node_id()
        group = ray.util.get_current_placement_group()
        self._placement_group = group.id.hex() if group is not None else None
        if console is not None and self.rank == 0:
            forward_warnings(self.say)

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
        if self.rank == 0 and self._placement_group is not None:
            metrics = {**metrics, PLACEMENT_GROUP_KEY: self._placement_group}
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

    def say(self, line: str) -> None:
        if self._console is not None:
            try:
                self._console.put(line, timeout=30)
                return
            except Exception:  # the driver is gone or its queue is: the line still goes to the log
                self._console = None
        say(line)


def forward_warnings(say: Any) -> None:
    """ltray's own warnings in this worker also go to ``say`` as ``warning: ...`` lines (the
    worker's log keeps them all, as before)."""
    shown = getattr(warnings.showwarning, "ltray_wraps", warnings.showwarning)  # wrap once

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if from_ltray(filename):
            say(f"warning: {message}")
        shown(message, category, filename, lineno, file, line)

    show.ltray_wraps = shown  # type: ignore[attr-defined]
    warnings.showwarning = show


def failure_notice(console: Any, max_failures: int) -> Any:
    """A Ray Train callback (it runs in the Train controller) that tells the console when a
    worker fails and the run restarts from its last checkpoint: the workers' own tracebacks
    stay in the logs. The failure that ends the run is the launcher's ``error:`` line."""
    from ray.train import UserCallback

    class FailureNotice(UserCallback):
        def __init__(self) -> None:
            self.failures = 0

        def after_exception(self, run_context: Any, worker_exceptions: dict) -> None:
            self.failures += 1
            if 0 <= max_failures < self.failures:
                return
            ranks = ", ".join(str(rank) for rank in sorted(worker_exceptions))
            reason = _last_line(next(iter(worker_exceptions.values()))).split(". ")[0]
            which = f"workers {ranks}" if len(worker_exceptions) > 1 else f"worker {ranks}"
            line = f"warning: {which} failed ({reason}); restarting from the last checkpoint"
            with contextlib.suppress(Exception):
                console.put(line, timeout=30)

    return FailureNotice()


def _last_line(exc: BaseException) -> str:
    """The innermost error's message, its last line (as the launcher's ``error:`` line); Ray's
    'actor died' line is a paragraph: its first sentence says what happened."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


class ConsoleRelay:
    """The driver's end of :meth:`RaySession.say`: a Ray queue (an actor that takes no CPU)
    whose lines a thread prints as they come, so the console shows a run's progress while its
    workers' output stays in Ray's log files. ``with ConsoleRelay() as queue:`` around
    ``trainer.fit()``; on exit, every line put before fit returned has been printed, in order.
    """

    def __init__(self, poll_s: float = 0.5) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="ltray-console", daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self.queue

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        from ray.util.queue import Empty

        try:
            while True:
                _show(self.queue.get_nowait())
        except Empty:
            pass
        finally:
            with contextlib.suppress(Exception):  # Ray may be gone already
                self.queue.shutdown()

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                line = self.queue.get(timeout=self._poll_s)
            except Empty:
                continue
            except Exception:  # the queue actor is gone: the run's lines stay in the logs
                return
            _show(line)


def _show(line: str) -> None:
    """A relayed line: warnings to stderr, the rest to stdout."""
    if line.startswith("warning: "):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    else:
        say(line)


def fetch_secrets(secrets: Any) -> list[Any]:
    """The job's secrets: given as they are with ``--local``; on Ray, a reference into Ray's
    object store, which keeps them out of the ``train_loop_config`` that Ray logs and records."""
    if secrets is None or isinstance(secrets, list):
        return list(secrets or [])
    import ray

    return ray.get(secrets)
