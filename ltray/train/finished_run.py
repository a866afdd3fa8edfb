"""A run that trained to the end, given again: answered from its final checkpoint.

The loop writes a finished run's last checkpoint (``checkpoint_..._final``) after it has logged
the final metrics and the model, so that checkpoint's ``final`` and ``history`` are the run's
result. ``ltray train`` and a restored sweep trial read it on the driver and start no worker:
on Ray that saves a whole Train run's start-up (20-30 s on a 2-core machine) to print one line.

Where the final checkpoint cannot be read (a process killed while it was being written), the
run is given to the loop as before: Ray restores the last checkpoint it registered, and the
loop finishes from there.
"""

from __future__ import annotations

import io
from typing import Any

from ltray.config import JobConfig
from ltray.data import Manifest
from ltray.tracking import MlflowTracker
from ltray.train.checkpoint import CHECKPOINT_FILE, load_state
from ltray.train.run_identity import IDENTITY_FILE, RunIdentity, claim_checkpoint_folder
from ltray.train.run_info import (
    final_step,
    finished_line,
    log_training_data,
    run_params,
    run_tags,
)
from ltray.train.schedule import scaled_lr
from ltray.train.session import LOCAL_FOLDER, say
from ltray.train.storage import Storage

# where and with what the run trained: the training set them, an answer keeps them
TRAINED_WITH_TAGS = (
    "ltray.worker_nodes",
    "ltray.machine",
    "ltray.submission_id",
    "ltray.version",
    "mlflow.source.git.commit",
)


def final_state(storage: Storage, identity: RunIdentity, local: bool) -> dict[str, Any] | None:
    """The final checkpoint of run ``identity`` when it trained to the end, else None.

    Only a folder that records this identity is read (another training's is refused, as
    :func:`claim_checkpoint_folder` does); the checkpoints looked at are those the loop would
    restore: a ``--local`` run's (``RUN/local/``) or a Ray run's (``RUN/``).
    """
    run_name = identity.run_name
    if not storage.exists(f"{run_name}/{IDENTITY_FILE}"):
        return None
    claim_checkpoint_folder(storage, identity)
    folder = f"{run_name}/{LOCAL_FOLDER}" if local else run_name
    finals = sorted(
        n for n in storage.list(folder) if n.startswith("checkpoint_") and "_final" in n
    )
    for name in reversed(finals):
        path = f"{folder}/{name}/{CHECKPOINT_FILE}"
        if not storage.exists(path):
            continue
        try:
            state = load_state(io.BytesIO(storage.read_bytes(path)))
        except Exception:  # cut short while written: the loop restores what Ray registered
            return None
        return state if state.get("final") else None
    return None


def answer_finished(
    job: JobConfig, run_name: str, state: dict[str, Any], manifest: Manifest
) -> str | None:
    """Say that the run is finished, and leave its MLflow run as the loop leaves a finished one:
    every epoch of the checkpoint's history and its final metrics logged, status FINISHED (a
    process killed after the final checkpoint left it RUNNING, or without its last epochs).
    The tags of where and with what it trained stay the training's. Returns the MLflow run's
    id (None without tracking)."""
    say(finished_line(run_name))
    if not job.tracking.enabled:
        return None
    world = job.scaling.num_workers
    params = run_params(job, run_name, world, scaled_lr(job.optim, world))
    tags = run_tags(job, "", manifest.fingerprint)
    tags = {key: value for key, value in tags.items() if key not in TRAINED_WITH_TAGS}
    tracker = MlflowTracker(
        job.tracking.uri, job.tracking.experiment, job.tracking.artifact_location
    )
    tracker.start(run_name, params, tags)
    log_training_data(tracker, job, manifest.fingerprint)
    tracker.fill_missing(state["history"])
    # logged once (the tag ltray.final_logged): here only where the store lacks them (a run
    # tracked in a new store); the model is not (that needs the network built on the driver)
    step, already_logged = final_step(job, state["history"], state["final"])
    tracker.log_final(step, state["final"], None, already_logged)
    tracker.finish()
    return tracker.run_id
