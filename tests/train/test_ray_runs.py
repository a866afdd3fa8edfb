"""Every loss of design.md on the real CIFAR-10-LT: those with a path of their own through the
distributed loop as Ray Train runs with 2 CPU workers, the rest in-process; and a Ray run whose
data set and checkpoints both live on S3 (a real S3-compatible server on 127.0.0.1)."""

from __future__ import annotations

import mlflow
import pytest
from train_support import make_job

from ltray.config import LOSS_NAMES, TWO_STAGE_METHODS
from ltray.train.launcher import run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", include_dashboard=False, num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shared_tracking(tmp_path_factory) -> str:
    """One SQLite store for all the runs of this module: creating one costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


# each of these takes a path of its own through the distributed loop: loss parameters and the
# ring radius averaged over ranks (and the logged model), the second stage's retrained head, its
# features gathered for tau, MaxNorm; the other losses differ from ce only in their arithmetic
# (tests/method) and train in-process below, which costs seconds, not 30 s. ce's plain path is
# dr's without the loss parameters, and ce trains on Ray in the demo's and the S3 test's runs.
ON_RAY = ("dr", "crt", "tau_norm", "weight_balancing")


def cifar_job(loss, data, tmp_path, tracking, workers):
    return make_job(
        data,
        tmp_path,
        name=f"cifar-{loss}",
        tracking={"uri": tracking, "experiment": loss, "log_model": loss == "dr"},
        model={"num_classes": 10},
        loss={"name": loss, "drw_epoch": 1, "decoupled": {"epochs": 1}},
        scaling={"num_workers": workers},
        schedule={"epochs": 2, "max_steps_per_epoch": 2, "max_eval_batches": 2},
    )


def check_run(job, final, loss):
    """Evaluation each epoch on val, test once at the end, selection on val only."""
    assert 0.0 <= final["test/acc"] <= 100.0
    client = mlflow.MlflowClient(job.tracking.uri)
    experiment = client.get_experiment_by_name(loss)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["ltray.method"] == loss
    history = client.get_metric_history(run.info.run_id, "train/loss_total")
    assert [m.step for m in history] == [0, 1]
    assert "test/acc" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [0, 1]
    if loss in TWO_STAGE_METHODS:
        assert "stage2/val_acc" in run.data.metrics  # measured on the val split
    if loss == "tau_norm":  # chosen on val: the first tau of the best val accuracy
        by_tau = [final[f"stage2/val_acc_by_tau/{tau:g}"] for tau in job.loss.decoupled.tau_grid]
        best = job.loss.decoupled.tau_grid[by_tau.index(max(by_tau))]
        assert final["stage2/tau"] == best and final["stage2/val_acc"] == max(by_tau)


@pytest.mark.shared_data
@pytest.mark.parametrize("loss", ON_RAY)
def test_two_worker_run_completes_with_its_mlflow_run(
    loss, cifar_lt_100_val50, tmp_path, local_ray, shared_tracking
):
    """Two epochs on 2 Ray workers, on CIFAR-10-LT with a val split of 50 per class."""
    job = cifar_job(loss, cifar_lt_100_val50, tmp_path, shared_tracking, workers=2)
    check_run(job, run_job(job).metrics, loss)


@pytest.mark.shared_data
@pytest.mark.parametrize("loss", [name for name in LOSS_NAMES if name not in ON_RAY])
def test_every_other_loss_completes_in_process_with_its_mlflow_run(
    loss, cifar_lt_100_val50, tmp_path, shared_tracking
):
    """The same two epochs with ``--local``, for the losses whose loop is ce's."""
    job = cifar_job(loss, cifar_lt_100_val50, tmp_path, shared_tracking, workers=1)
    check_run(job, run_job(job, local=True).metrics, loss)


def test_data_and_checkpoints_on_s3(tiny_data, s3_options, tmp_path, local_ray):
    from ltray import fs as ltray_fs
    from ltray.train.session import CHECKPOINT_FILE

    filesystem, _ = ltray_fs.get_fs("s3://ltray-runs", s3_options)
    filesystem.mkdir("ltray-runs")
    filesystem.put(tiny_data, "ltray-runs/data/tiny", recursive=True)
    job = make_job(
        "s3://ltray-runs/data/tiny",
        tmp_path,
        data={"storage_options": s3_options},
        storage={"url": "s3://ltray-runs/runs", "storage_options": s3_options},
        scaling={"num_workers": 2},
        tracking={"log_model": False},
    )
    result = run_job(job)
    assert "test/acc" in result.metrics
    run_folder = f"ltray-runs/runs/{result.run_name}"
    saved = [p for p in filesystem.find(run_folder) if p.endswith(CHECKPOINT_FILE)]
    assert saved, f"no checkpoint under s3://{run_folder}"
    client = mlflow.MlflowClient(job.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    params = str(run.data.params)
    assert s3_options["secret"] not in params and s3_options["key"] not in params


def test_divergence_on_ray_fails_once_with_epoch_and_step(tiny_data, tmp_path, local_ray):
    """Reported by the workers rather than raised, so Ray does not retry a deterministic failure
    max_failures times; the launcher turns the report into one clear error."""
    from ltray.errors import LtrayError

    job = make_job(
        tiny_data,
        tmp_path,
        optim={"lr": 1.0e12},
        scaling={"num_workers": 2, "max_failures": 3},
        tracking={"log_model": False},
    )
    with pytest.raises(LtrayError, match=r"non-finite at epoch 0 step \d"):
        run_job(job)
