"""A real two-node Ray cluster on this machine (token authentication on, as Ray >= 2.59 sets
it up) and a real ``mlflow server``: a 2-worker run spread over both nodes logs over HTTP."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from processes import ltray_executable, ray_cluster
from processes import mlflow_server as start_mlflow_server
from train_support import make_job

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@pytest.fixture
def mlflow_server(tmp_path):
    with start_mlflow_server(tmp_path) as (uri, _):
        yield uri


@pytest.fixture(scope="module")
def two_node_cluster():
    """Head and a second node, each with 2 CPUs and a resource naming it, on 127.0.0.1."""
    with ray_cluster(nodes=2, cpus=2) as env:
        yield env


def test_two_worker_run_spread_over_two_nodes_logs_over_http(
    tiny_data, tmp_path, mlflow_server, two_node_cluster
):
    job = make_job(
        tiny_data,
        tmp_path,
        scaling={"num_workers": 2, "placement_strategy": "STRICT_SPREAD"},
        tracking={"uri": mlflow_server, "experiment": "cluster"},
    )
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    done = subprocess.run(
        [ltray_executable(), "train", str(job_file)],
        env=two_node_cluster,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("cluster")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    placed = dict(item.split("@") for item in run.data.tags["ltray.worker_nodes"].split(","))
    assert len(set(placed.values())) == 2, f"the two workers should sit on two nodes: {placed}"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_total")] == [
        0,
        1,
    ]
    assert "final_metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")  # fetched over HTTP
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def test_a_client_without_the_token_is_refused(two_node_cluster):
    env = {k: v for k, v in two_node_cluster.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = "wrong-" + secrets.token_hex(8)
    done = subprocess.run(
        [sys.executable, "-c", "import ray; ray.init(); print(ray.cluster_resources())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
