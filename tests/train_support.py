"""Job dicts and CLI helpers for the training tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ltray.cli import app
from ltray.config import validate_job


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"ltray {' '.join(args)} failed:\n{result.output}"
    return result.output


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def make_job(data_url: str, workdir: Path, **sections: Any):
    """A job that trains in seconds: ResNet-32, batch 16, 2 epochs of at most 3 steps."""
    raw = {
        "name": "t",
        "data": {"url": data_url, "image_size": 32, "loader_workers": 0},
        "model": {"arch": "resnet32"},
        "loss": {"name": "ce"},
        "optim": {"lr": 0.05, "batch_size": 16, "base_batch_size": 16},
        "schedule": {"epochs": 2, "warmup_epochs": 0, "milestones": [], "max_steps_per_epoch": 3},
        "scaling": {"num_workers": 1, "max_failures": 0},
        "storage": {"url": str(workdir / "runs")},
        "tracking": {"uri": f"sqlite:///{workdir}/mlflow.db", "experiment": "tests"},
    }
    return validate_job(merge(raw, sections))
