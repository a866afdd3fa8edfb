"""Tiny runs, each trained once for the whole folder with ``ltray train --local``: ``trained``
(ce) and ``trained_dr`` (the seed paper's loss), in one MLflow store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from train_support import make_job, run_cli


@dataclass
class Trained:
    data: str  # the data set (train, val, test)
    job_file: Path  # the job, as a YAML file
    tracking_uri: str
    run_id: str
    run_name: str
    run_folder: Path  # its checkpoints
    final: dict[str, float]  # training's final metrics (final_metrics.json)
    workdir: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """4 classes (many, medium and few with these thresholds), val and test; 2 epochs of 3
    steps of ResNet-32 with the ce loss, logged to a SQLite MLflow store with its model."""
    workdir = tmp_path_factory.mktemp("eval")
    data = str(workdir / "data")
    run_cli(
        "prepare", "synthetic", data, "--classes", "4", "--n-max", "40", "--imbalance", "4",
        "--val-per-class", "4", "--test-per-class", "8", "--workers", "1",
    )  # fmt: skip
    return _train(make_job(data, workdir, data=THRESHOLDS), data, workdir, "job.yaml")


@pytest.fixture(scope="session")
def trained_dr(trained) -> Trained:
    """``trained``'s job (whose loss is ce) with the seed paper's loss, ``dr``: same data,
    same MLflow store, so the two runs can be compared."""
    job = make_job(trained.data, trained.workdir, data=THRESHOLDS, loss={"name": "dr"})
    return _train(job, trained.data, trained.workdir, "job_dr.yaml")


THRESHOLDS = {"many_threshold": 25, "few_threshold": 15}


def _train(job, data: str, workdir: Path, file_name: str) -> Trained:
    import mlflow

    job_file = workdir / file_name
    job_file.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude={"submit"})))
    output = run_cli("train", str(job_file), "--local")
    run_id = next(line.split()[2] for line in output.splitlines() if line.startswith("MLflow run"))
    client = mlflow.MlflowClient(job.tracking.uri)
    final = json.loads(
        Path(client.download_artifacts(run_id, "final_metrics.json", str(workdir))).read_text()
    )
    run_name = client.get_run(run_id).data.tags["ltray.run_name"]
    return Trained(
        data=data,
        job_file=job_file,
        tracking_uri=job.tracking.uri,
        run_id=run_id,
        run_name=run_name,
        run_folder=workdir / "runs" / run_name,
        final=final,
        workdir=workdir,
    )
