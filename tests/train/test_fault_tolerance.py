"""A training worker killed mid-run (SIGKILL) is replaced; the run resumes from its last
checkpoint and ends with the weights of an uninterrupted run, each epoch in MLflow once."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from processes import command_line, descendants, ltray_executable, wait_for
from train_support import make_job

from ltray.train.checkpoint import CHECKPOINT_FILE, load_state
from ltray.train.launcher import absolutize

pytestmark = pytest.mark.slow

EPOCHS = 4


def write_job(job, folder: Path) -> Path:
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    return path


def start_training(job_file: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [ltray_executable(), "train", str(job_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def checkpoints(job) -> list[Path]:
    folder = Path(job.storage.url) / absolutize(job).run_name()
    return sorted(p for p in folder.glob("checkpoint_*") if (p / CHECKPOINT_FILE).exists())


def final_weights(job) -> dict[str, torch.Tensor]:
    state = load_state(io.BytesIO((checkpoints(job)[-1] / CHECKPOINT_FILE).read_bytes()))
    assert state["final"], "the last checkpoint should be the finished run's"
    return state["model"]


def epochs_logged(job) -> list[int]:
    client = mlflow.MlflowClient(job.tracking.uri)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss_total"))


def two_worker_job(tiny_data: str, folder: Path):
    return make_job(
        tiny_data,
        folder,
        scaling={"num_workers": 2, "max_failures": 2},
        schedule={"epochs": EPOCHS, "max_steps_per_epoch": 3},
        tracking={"log_model": False},
    )


def test_killed_worker_is_replaced_and_the_run_ends_like_an_uninterrupted_one(tiny_data, tmp_path):
    reference = two_worker_job(tiny_data, tmp_path / "reference")
    (tmp_path / "reference").mkdir()
    done = subprocess.run(
        [ltray_executable(), "train", str(write_job(reference, tmp_path / "reference"))],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    (tmp_path / "killed").mkdir()
    job = two_worker_job(tiny_data, tmp_path / "killed")
    process = start_training(write_job(job, tmp_path / "killed"))
    try:
        wait_for(lambda: checkpoints(job), 300, "the first checkpoint")
        workers = wait_for(
            lambda: [p for p in descendants(process.pid) if "RayTrainWorker" in command_line(p)],
            30,
            "a training worker process",
        )
        assert process.poll() is None, "the run finished before a worker could be killed"
        os.kill(workers[0], signal.SIGKILL)
        output, _ = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-4000:]
    # the console says so (the worker's traceback stays in the log folder)
    notice = r"^warning: workers? [\d, ]+ failed \(.+\); restarting from the last checkpoint$"
    assert re.search(notice, output, re.M), output[-4000:]

    expected, resumed = final_weights(reference), final_weights(job)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-5)
    assert epochs_logged(job) == list(range(EPOCHS))
