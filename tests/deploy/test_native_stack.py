"""docker/compose.yaml's stack, its servers started natively: the compose file's own
``mlflow server`` line (PostgreSQL backend store, S3 artifact destination, --serve-artifacts,
--allowed-hosts) and its Ray nodes' environment (S3 endpoint and credentials, MLflow URI), on a
2-node Ray cluster with token authentication. One small run's data set, checkpoints, metrics,
artifacts and model must land where the stack keeps them: rows in PostgreSQL, objects in S3."""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from deploy.stack import (
    compose_environment,
    compose_mlflow_server,
    postgres_server,
    s3_server,
)
from processes import free_port, ltray_executable, ray_cluster

pytestmark = pytest.mark.slow

BUCKET = "ltray"


def run_ltray(*args: str, env: dict[str, str], timeout: int = 300) -> str:
    done = subprocess.run(
        [ltray_executable(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"ltray {' '.join(args)} failed:\n{output[-4000:]}"
    return output


def host_header_status(uri: str, host: str) -> int:
    """The status of an API call with this Host header (/health is exempt from the check)."""
    url = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_two_node_run_logs_through_the_compose_mlflow_line_into_postgres_and_s3(tmp_path):
    with contextlib.ExitStack() as stack:
        postgres = stack.enter_context(postgres_server())
        s3 = stack.enter_context(s3_server(BUCKET))
        mlflow_port = free_port()
        values = {
            "POSTGRES_USER": postgres.user,
            "POSTGRES_PASSWORD": postgres.password,
            "POSTGRES_DB": postgres.database,
            "S3_BUCKET": s3.bucket,
            "LTRAY_S3_ACCESS_KEY": s3.key,
            "LTRAY_S3_SECRET_KEY": s3.secret,
            "RAY_AUTH_TOKEN": "set-by-ray-cluster",
        }
        hosts = {
            "postgres:5432": f"127.0.0.1:{postgres.port}",
            "minio:9000": s3.netloc,
            "mlflow:5000": f"127.0.0.1:{mlflow_port}",
        }
        uri = stack.enter_context(
            compose_mlflow_server(values, hosts, mlflow_port, tmp_path / "mlflow.log")
        )
        # MLflow 3's host check is on: the compose service name passes, another name does not
        assert host_header_status(uri, f"127.0.0.1:{mlflow_port}") == 200
        assert host_header_status(uri, "elsewhere.example:5000") == 403

        # the Ray nodes get what the compose file gives them (ray_cluster sets its own token)
        node_env = {
            k: v
            for k, v in compose_environment("ray-worker", values, hosts).items()
            if not k.startswith("RAY_")
        }
        assert node_env["AWS_ENDPOINT_URL"] == s3.endpoint
        with pytest.MonkeyPatch.context() as patch:
            for key, value in node_env.items():
                patch.setenv(key, value)
            cluster = stack.enter_context(ray_cluster(nodes=2, cpus=2))

        data_url = f"s3://{BUCKET}/data/tiny"
        run_ltray(
            "prepare", "synthetic", data_url, "--classes", "4", "--imbalance", "4",
            "--n-max", "24", "--val-per-class", "4", "--test-per-class", "4",
            "--image-size", "32", "--seed", "1", "--workers", "0",
            env=cluster,
        )  # fmt: skip
        job = {
            "name": "stack",
            "data": {"url": data_url, "image_size": 32, "loader_workers": 0},
            "model": {"arch": "resnet32"},
            "loss": {"name": "ce"},
            "optim": {"lr": 0.05, "batch_size": 8, "base_batch_size": 16},
            "schedule": {"epochs": 2, "warmup_epochs": 0, "milestones": [],
                         "max_steps_per_epoch": 2},
            "scaling": {"num_workers": 2, "placement_strategy": "STRICT_SPREAD",
                        "max_failures": 0},
            "storage": {"url": f"s3://{BUCKET}/runs"},
            "tracking": {"uri": node_env["MLFLOW_TRACKING_URI"], "experiment": "stack"},
        }  # fmt: skip
        job_file = tmp_path / "job.yaml"
        job_file.write_text(yaml.safe_dump(job))
        run_ltray("train", str(job_file), env=cluster)

        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name("stack")
        (run,) = client.search_runs([experiment.experiment_id])
        run_id = run.info.run_id
        assert run.info.status == "FINISHED"
        placed = dict(item.split("@") for item in run.data.tags["ltray.worker_nodes"].split(","))
        assert len(set(placed.values())) == 2, f"the workers should sit on two nodes: {placed}"
        history = client.get_metric_history(run_id, "train/loss_total")
        assert sorted(m.step for m in history) == [0, 1]
        assert "final_metrics.json" in {a.path for a in client.list_artifacts(run_id)}
        (model,) = client.search_logged_models(experiment_ids=[experiment.experiment_id])
        assert model.source_run_id == run_id

        # the rows are PostgreSQL's ...
        with contextlib.closing(postgres.connect()) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
            assert cursor.fetchall() == [("FINISHED",)]
            cursor.execute(
                "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'train/loss_total'",
                (run_id,),
            )
            assert sorted(step for (step,) in cursor.fetchall()) == [0, 1]
            cursor.execute("SELECT artifact_location FROM experiments WHERE name = 'stack'")
            assert cursor.fetchone()[0].startswith("mlflow-artifacts:")
        # ... the artifacts, the model, the data set and the checkpoints are S3 objects
        artifacts = s3.keys("mlflow/")
        assert any(k.endswith(f"{run_id}/artifacts/final_metrics.json") for k in artifacts)
        assert any(k.endswith(f"{model.model_id}/artifacts/MLmodel") for k in artifacts)
        assert any(k.startswith("data/tiny/train/") for k in s3.keys("data/tiny/"))
        assert "data/tiny/manifest.json" in s3.keys("data/tiny/")
        assert any(k.endswith("state.pt") for k in s3.keys("runs/")), s3.keys("runs/")
        # and the server reads them back from S3 for a client
        local = client.download_artifacts(run_id, "final_metrics.json", str(tmp_path))
        assert "test/acc" in json.loads(Path(local).read_text())
