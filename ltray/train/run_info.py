"""What a run tells about itself: MLflow params and tags, the console's progress line, and the
model it logs (:class:`Predictor`)."""

from __future__ import annotations

import ast
import math
import os
from typing import Any

import torch
import torch.distributed as dist

from ltray.config import JobConfig, flatten, validate_job
from ltray.secrets import MASK, public_url, redact
from ltray.train.provenance import ltray_commit, ltray_version, machine
from ltray.train.run_identity import IDENTITY_TAG, identity_of
from ltray.train.session import Session, say  # noqa: F401 (say: re-exported)


def run_params(job: JobConfig, run_name: str, world_size: int, peak_lr: float) -> dict[str, Any]:
    """The resolved job, flattened and redacted, plus what the run decided at start (not how
    it was submitted: that may change when a run is resubmitted, and MLflow params may not)."""
    params = flatten(redact(job.model_dump(mode="json", exclude={"submit"})))
    params.update({"run_name": run_name, "world_size": world_size, "peak_lr": peak_lr})
    return params


RUN_ONLY_PARAMS = ("run_name", "world_size", "peak_lr")  # what run_params adds to the job


def job_from_params(params: dict[str, str], source: str) -> JobConfig:
    """The resolved job back from a run's MLflow params (the inverse of :func:`run_params`).

    MLflow keeps every param as text: lists and ``None`` are read back as Python literals,
    the rest stays text for the schema to convert (``"32"`` into an int field). Masked
    values (storage options, credentials) are left to their defaults: whoever evaluates
    supplies their own credentials (environment, ``--data``). ``source`` names the run in
    errors.
    """
    nested: dict[str, Any] = {}
    for key, text in params.items():
        if key in RUN_ONLY_PARAMS or text == MASK:
            continue
        value: Any = text
        if text == "None":
            value = None
        elif text and text[0] in "[({":
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                pass
        *sections, leaf = key.split(".")
        node = nested
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_job(nested, source=source)


def worker_nodes(session: Session, distributed: bool) -> str:
    """'rank@node' of every worker, so a run shows where it ran."""
    nodes: list[Any] = [session.node]
    if distributed:
        nodes = [None] * session.world_size
        dist.all_gather_object(nodes, session.node)
    return ",".join(f"{rank}@{node}" for rank, node in enumerate(nodes))


def run_tags(job: JobConfig, nodes: str, data_fingerprint: str) -> dict[str, str]:
    """Where the run ran and what it is: data set (URL without credentials, and the manifest's
    fingerprint), method, architecture, its identity, ltray's commit and version, and the Ray
    job that ran it where `ltray submit` did."""
    tags = {
        "ltray.dataset.fingerprint": data_fingerprint,
        "ltray.worker_nodes": nodes,
        "ltray.dataset": public_url(job.data.url).split("?")[0],
        "ltray.method": job.loss.name,
        "ltray.arch": job.model.arch,
        IDENTITY_TAG: identity_of(job).as_json(),
        "mlflow.source.git.commit": ltray_commit(),
        "ltray.version": ltray_version(),
        "ltray.machine": machine(),
    }
    submission = os.environ.get("LTRAY_SUBMISSION_ID")  # set by `ltray submit`
    if submission:
        tags["ltray.submission_id"] = submission
    return tags


def log_training_data(tracker: Any, job: JobConfig, data_fingerprint: str) -> None:
    """The job's training data set as the run's MLflow dataset input (its URL without
    credentials, its last path part as the name, the manifest's fingerprint)."""
    url = public_url(job.data.url)
    tracker.log_dataset(url, url.rstrip("/").rsplit("/", 1)[-1], data_fingerprint)


def finished_line(run_name: str) -> str:
    """What a run that trained to the end says when it is given again."""
    return f"[ltray] run {run_name} already finished; start fresh to rerun it"


def final_step(
    job: JobConfig, history: list[dict[str, float]], final: dict[str, float]
) -> tuple[int, set[str]]:
    """(the step the final metrics belong to, those of them the last epoch logged already).

    They belong to the last epoch, unless a second stage ran after it (step = epochs, nothing
    logged yet); the last epoch's own metrics (its test evaluation, where it had no val split)
    are not logged a second time."""
    last_epoch = job.schedule.epochs - 1
    if job.loss.is_decoupled:
        return last_epoch + 1, set()
    last = history[-1] if history else {}
    return last_epoch, {key for key in final if key in last}


def progress_line(record: dict[str, float], eval_prefix: str) -> str:
    p = eval_prefix
    shown = ["train/loss_total", f"{p}/acc", f"{p}/acc_many", f"{p}/acc_medium", f"{p}/acc_few"]
    parts = [f"{k}={record[k]:.2f}" for k in shown if k in record]
    rate = record.get("train/images_per_s", math.nan)
    return f"[ltray] epoch {int(record['epoch'])}: {' '.join(parts)} ({rate:.0f} img/s)"


def model_contract(job: JobConfig, classes: list[str], output_kind: str) -> dict[str, Any]:
    """What the logged model expects and returns, stored with it as MLflow model metadata."""
    size = job.data.image_size
    return {
        "input": {
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB",
            "range": [0.0, 1.0],
            "height": size,
            "width": size,
        },
        "normalization": {
            "inside_model": True,
            "mean": list(job.data.mean),
            "std": list(job.data.std),
        },
        "output": {
            "kind": output_kind,
            "shape": ["batch", len(classes)],
            "softmax_gives": "class probabilities",
        },
        "classes": list(classes),
    }


class Predictor(torch.nn.Module):
    """What MLflow serves: float RGB images in [0, 1], NCHW, in; the scores the prediction is
    made from (``criterion.output_kind``: logits or scaled cosines) out. The normalisation is
    inside, so callers pass plain images."""

    def __init__(self, model, criterion, mean, std) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.criterion.predict_logits(self.model((images - self.mean) / self.std))
