"""A Ray Train worker killed (SIGKILL) inside an epoch is replaced; the run resumes from its last
mid-epoch checkpoint at that batch and ends with the weights of an uninterrupted run, every
MLflow metric once per step with the finished run's value.

The hard case on purpose: 89 training rows on 2 workers (ranks' every-row-once shares differ,
and batches of 4 do not divide them), warm-up then cosine lr, ``dr`` with a learned scale and a
learned ring radius, 2 loader workers per rank, a checkpoint every 4 steps.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml
from processes import COMMAND_TIMEOUT_S, command_line, descendants, ltray_executable, wait_for
from train_support import (
    assert_logged_as_finished,
    assert_same_metrics,
    assert_same_training,
    cpu_run_name,
    logged_metrics,
    make_job,
)

from ltray.train.checkpoint import CHECKPOINT_FILE, load_state

pytestmark = pytest.mark.slow

EPOCHS = 2


def write_job(job, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
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


def run_folder(job) -> Path:
    return Path(job.storage.url) / cpu_run_name(job, local=False)


def final_state(job) -> dict:
    (last,) = run_folder(job).glob(f"checkpoint_*_final-*/{CHECKPOINT_FILE}")
    return load_state(io.BytesIO(last.read_bytes()))


def the_run(job):
    client = mlflow.MlflowClient(job.tracking.uri)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def registered(checkpoint: str, job) -> bool:
    """Whether Ray's checkpoint manager has registered ``checkpoint`` (its snapshot names it)."""
    snapshot = run_folder(job) / "checkpoint_manager_snapshot.json"
    return snapshot.exists() and checkpoint in snapshot.read_text()


def train_workers(process: subprocess.Popen) -> set[int]:
    """The Ray Train worker processes, not their data-loader children (which share the name)."""
    named = {p for p in descendants(process.pid) if "RayTrainWorker" in command_line(p)}
    return {p for p in named if parent_of(p) not in named}


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def hard_job(data: str, folder: Path):
    return make_job(
        data,
        folder,
        data={"loader_workers": 2},
        loss={"name": "dr", "learn_scale": True, "norm": {"kind": "ring", "radius": None}},
        optim={"batch_size": 4},  # 44 rows a rank: 11 steps an epoch
        schedule={
            "epochs": EPOCHS,
            "warmup_epochs": 1,
            "kind": "cosine",
            "max_steps_per_epoch": None,
        },
        scaling={"num_workers": 2, "max_failures": 2},
        storage={"checkpoint_every_steps": 4},
        tracking={"log_model": False},
    )


def test_worker_killed_inside_an_epoch_resumes_there_and_ends_like_an_uninterrupted_run(
    odd_data, tmp_path
):
    reference = hard_job(odd_data, tmp_path / "reference")
    done = subprocess.run(
        [ltray_executable(), "train", str(write_job(reference, tmp_path / "reference"))],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    job = hard_job(odd_data, tmp_path / "killed")
    process = start_training(write_job(job, tmp_path / "killed"))
    try:
        # epoch 1 after its 4th step, once Ray has registered that checkpoint (its files exist
        # a little earlier): the latest checkpoint is then a mid-epoch one for 4 steps
        wait_for(lambda: registered("checkpoint_000001_000004", job), 300, "a mid-epoch checkpoint")
        first = train_workers(process)
        assert len(first) == 2 and process.poll() is None, "no training workers left to kill"
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda: train_workers(process) - first, 120, "replacement workers")
        output, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-4000:]
    # the console says so (the worker's traceback stays in the log folder)
    notice = r"^warning: workers? [\d, ]+ failed \(.+\); restarting from the last checkpoint$"
    assert re.search(notice, output, re.M), output[-4000:]
    assert not Path(f"/proc/{victim}").exists() and victim not in replaced

    client, run = the_run(job)
    # the same float32 operations in the same order: anything beyond rounding is a resume bug
    resumed = final_state(job)
    assert_same_training(final_state(reference), resumed)
    assert_logged_as_finished(client, run.info.run_id, resumed)
    reference_client, reference_run = the_run(reference)
    want = logged_metrics(reference_client, reference_run.info.run_id)
    assert_same_metrics(want, logged_metrics(client, run.info.run_id))
    # restored from a registered checkpoint inside epoch 1, not from the epoch's start
    assert run.data.tags["ltray.resumed_at"] in ("epoch 1 batch 4", "epoch 1 batch 8")
    assert run.info.status == "FINISHED"
