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


def logged_metrics(client, run_id: str) -> dict[str, dict[int, float]]:
    """Every metric's full MLflow history as {key: {step: value}}, asserting that no step of
    any metric was logged twice."""
    out: dict[str, dict[int, float]] = {}
    for key in client.get_run(run_id).data.metrics:
        history = client.get_metric_history(run_id, key)
        steps = sorted(m.step for m in history)
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {steps}"
        out[key] = {m.step: m.value for m in history}
    return out


def assert_logged_as_finished(client, run_id: str, state: dict[str, Any]) -> None:
    """MLflow holds each metric once per step, with the values of the finished run's checkpoint
    (its epoch history and final metrics), and nothing else (jobs without a second stage)."""
    expected: dict[str, dict[int, float]] = {}
    for record in state["history"]:
        epoch = int(record["epoch"])
        expected.setdefault("epoch", {})[epoch] = float(epoch)
        for key, value in record.items():
            if key != "epoch":
                expected.setdefault(key, {})[epoch] = value
    # the final metrics belong to the last epoch (no second stage in these jobs); those the
    # last epoch logged already (test/* without a val split) are the same numbers, not again
    last = len(state["history"]) - 1
    for key, value in state["final"].items():
        if last in expected.get(key, {}):
            assert expected[key][last] == value, key
        else:
            expected.setdefault(key, {})[last] = value
    assert logged_metrics(client, run_id) == expected


def cpu_run_name(job, local: bool) -> str:
    """The run name ``run_job(job, local=local)`` uses on a CPU machine or cluster."""
    from ltray.data import read_manifest
    from ltray.train.launcher import absolutize
    from ltray.train.run_identity import identity_of, resolve_job

    job = absolutize(job)
    classes = read_manifest(job.data.url, job.data.storage_options).num_classes
    return identity_of(
        resolve_job(
            job,
            world_size=1 if local else job.scaling.num_workers,
            use_gpu=False,
            num_classes=classes,
        )
    ).run_name


# the only metrics a resume may change
TIMING = ("train/images_per_s", "train/epoch_s", "time/eval_s", "time/wall_s")


def local_state(job) -> dict[str, Any] | None:
    """The latest checkpoint of ``run_job(job, local=True)``."""
    from ltray.train.session import LocalSession
    from ltray.train.storage import Storage

    name = cpu_run_name(job, local=True)
    return LocalSession(Storage(job.storage.url), name, keep=2).latest_state()


def assert_same_training(expected: dict[str, Any], resumed: dict[str, Any]) -> None:
    """Model and loss parameters of two checkpoints agree: the same float32 operations in the
    same order, so anything beyond rounding is a resume bug."""
    import torch

    for part in ("model", "criterion"):
        for key, value in expected[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=1e-6, atol=1e-7)


def assert_same_metrics(want: dict[str, dict[int, float]], got: dict[str, dict[int, float]]):
    """The same metrics at the same steps with the same values, timings aside."""
    import pytest

    assert want.keys() == got.keys()
    for key in set(want) - set(TIMING):
        for step, value in want[key].items():
            assert got[key][step] == pytest.approx(value, rel=1e-6, abs=1e-9), (key, step)
