"""Sweep files over a job that trains in seconds, for the sweep tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from train_support import merge


def tiny_job(data_url: str, folder: Path, **sections: Any) -> dict[str, Any]:
    """ResNet-32, dr, 3 epochs of 2 steps, one eval batch: seconds per trial. No trial logs
    its model (the export costs seconds a trial; tests/train cover model logging)."""
    raw = {
        "name": "t",
        "data": {"url": data_url, "image_size": 32, "loader_workers": 0},
        "model": {"arch": "resnet32"},
        "loss": {"name": "dr"},
        "optim": {"lr": 0.05, "batch_size": 16, "base_batch_size": 16},
        "schedule": {
            "epochs": 3,
            "warmup_epochs": 0,
            "milestones": [],
            "max_steps_per_epoch": 2,
            "max_eval_batches": 1,
        },
        "scaling": {"num_workers": 1, "max_failures": 0},
        "storage": {"url": str(folder / "runs")},
        "tracking": {
            "uri": f"sqlite:///{folder}/mlflow.db",
            "experiment": "sweeps",
            "log_model": False,
        },
    }
    return merge(raw, sections)


def write_sweep(folder: Path, data_url: str, job: dict | None = None, **sections: Any) -> Path:
    """``folder/sweep.yaml`` over ``folder/job.yaml``: the seed paper's three knobs, 6 random
    trials, ASHA from epoch 1 halving; ``sections`` replace the sweep's."""
    job_file = folder / "job.yaml"
    job_file.write_text(yaml.safe_dump(job or tiny_job(data_url, folder)))
    sweep = {
        "name": "tiny",
        "base": str(job_file),
        "space": {
            "loss.margin": {"uniform": [0.0, 0.5]},
            "loss.uniformity.weight": {"loguniform": [0.001, 1.0]},
            "loss.norm.weight": {"loguniform": [0.0001, 0.1]},
        },
        "search": {"algorithm": "random", "trials": 6, "seed": 0},
        "scheduler": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 2},
        **sections,
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path
