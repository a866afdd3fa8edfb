"""What a run tells about itself: MLflow params and tags, the console's progress line, and the
model it logs (:class:`Predictor`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from ltray.config import JobConfig, flatten
from ltray.secrets import redact
from ltray.train.provenance import git_commit
from ltray.train.session import Session, say  # noqa: F401 (say: re-exported)


def run_params(job: JobConfig, run_name: str, world_size: int, peak_lr: float) -> dict[str, Any]:
    """The resolved job, flattened and redacted, plus what the run decided at start."""
    params = flatten(redact(job.model_dump(mode="json")))
    params.update({"run_name": run_name, "world_size": world_size, "peak_lr": peak_lr})
    return params


def worker_nodes(session: Session, distributed: bool) -> str:
    """'rank@node' of every worker, so a run shows where it ran."""
    nodes: list[Any] = [session.node]
    if distributed:
        nodes = [None] * session.world_size
        dist.all_gather_object(nodes, session.node)
    return ",".join(f"{rank}@{node}" for rank, node in enumerate(nodes))


def run_tags(job: JobConfig, nodes: str) -> dict[str, str]:
    return {
        "ltray.worker_nodes": nodes,
        "ltray.dataset": job.data.url.split("?")[0],
        "ltray.method": job.loss.name,
        "ltray.arch": job.model.arch,
        "mlflow.source.git.commit": git_commit() or "unknown",
    }


def progress_line(record: dict[str, float], eval_prefix: str) -> str:
    p = eval_prefix
    shown = ["train/loss_total", f"{p}/acc", f"{p}/acc_many", f"{p}/acc_medium", f"{p}/acc_few"]
    parts = [f"{k}={record[k]:.2f}" for k in shown if k in record]
    rate = record.get("train/images_per_s", math.nan)
    return f"[ltray] epoch {int(record['epoch'])}: {' '.join(parts)} ({rate:.0f} img/s)"


class Predictor(torch.nn.Module):
    """What MLflow serves: normalised float images in, prediction logits out."""

    def __init__(self, model, criterion, mean, std) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.criterion.predict_logits(self.model((images - self.mean) / self.std))
