"""docker/compose.yaml's stack, its servers started natively, and jobs submitted to it as users
submit them: the compose file's own ``mlflow server`` line (PostgreSQL backend store, S3 artifact
destination, --serve-artifacts, --allowed-hosts) and its Ray nodes' environment (S3 endpoint and
credentials, MLflow URI), on a 2-node Ray cluster started with ``ray start`` and token
authentication (as Ray >= 2.59 sets it up).

``ltray submit jobs/demo.yaml --follow`` from the repository's root runs to success through the
job API, its data set, checkpoints, metrics, artifacts and model land where the stack keeps them
(rows in PostgreSQL, objects in S3), a second submit is refused, and ``ltray stop`` ends a long job
and its workers; ``--resubmit`` resumes it. One stack for the module: each start costs tens of
seconds on 2 cores."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from deploy.stack import (
    compose_environment,
    compose_mlflow_server,
    postgres_server,
    s3_server,
)
from processes import (
    COMMAND_TIMEOUT_S,
    cluster_processes,
    command_line,
    free_port,
    ltray_executable,
    python_json,
    ray_cluster,
    wait_for,
)

from ltray.config import load_job

pytestmark = pytest.mark.slow

BUCKET = "ltray"
REPO = Path(__file__).resolve().parents[2]
DATA = f"s3://{BUCKET}/data/tiny"
QUICK = [
    "schedule.max_steps_per_epoch=2",
    "schedule.max_eval_batches=1",
    "data.loader_workers=0",
    "optim.batch_size=16",
]


def host_header_status(uri: str, host: str) -> int:
    """The status of an API call with this Host header (/health is exempt from the check)."""
    url = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(the cluster's environment, with its job API in RAY_API_SERVER_ADDRESS; the MLflow
    server's URI; PostgreSQL; S3; --set lines that put the demo job's data, runs and tracking on
    the stack)."""
    folder = tmp_path_factory.mktemp("stack")
    with contextlib.ExitStack() as servers:
        postgres = servers.enter_context(postgres_server())
        s3 = servers.enter_context(s3_server(BUCKET))
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
        uri = servers.enter_context(
            compose_mlflow_server(values, hosts, mlflow_port, folder / "mlflow.log")
        )
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
            env = servers.enter_context(ray_cluster(nodes=2, cpus=2))
        code, output = ltray(
            env, "prepare", "synthetic", DATA, "--classes", "4", "--imbalance", "4",
            "--n-max", "40", "--val-per-class", "4", "--test-per-class", "4",
            "--image-size", "32", "--seed", "1", "--workers", "0",
        )  # fmt: skip
        assert code == 0, output
        sets = [
            f"data.url={DATA}",
            f"storage.url=s3://{BUCKET}/runs",
            f"tracking.uri={node_env['MLFLOW_TRACKING_URI']}",
            *QUICK,
        ]
        yield env, uri, postgres, s3, sets


def ltray(env: dict, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
    """``ltray ARGS`` from the repository's root (what a submit uploads), as a user runs it."""
    done = subprocess.run(
        [ltray_executable(), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


def with_sets(sets: list[str]) -> list[str]:
    return [arg for text in sets for arg in ("--set", text)]


def alive_actors(env: dict) -> list[str]:
    """Class names of the cluster's alive actors, asked from another process (Ray's state API)."""
    code = (
        "import json, os\n"
        "from ray.util.state import list_actors\n"
        "actors = list_actors(address=os.environ['RAY_API_SERVER_ADDRESS'],"
        " filters=[('state', '=', 'ALIVE')], limit=1000)\n"
        "print(json.dumps([a.class_name for a in actors]))\n"
    )
    return python_json(code, env=env, timeout=120)


def train_worker_processes(env: dict) -> list[str]:
    """The command lines of this cluster's Ray Train workers (not another test's Ray's)."""
    port = int(env["RAY_ADDRESS"].rsplit(":", 1)[1])
    return [c for c in map(command_line, cluster_processes(port)) if "RayTrainWorker" in c]


def submission_id_in(output: str) -> str:
    match = re.search(r"submitted (ltray-\S+) to", output)
    assert match, output[-3000:]
    return match.group(1)


def test_token_errors_say_which_and_how(stack, tmp_path):
    env, *_ = stack
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    code, output = ltray(no_token, "jobs", timeout=120)
    assert code == 1
    assert "uses token authentication and no token was sent (none in RAY_AUTH_TOKEN, " in output
    assert "export RAY_AUTH_MODE=token" in output

    code, output = ltray({**env, "RAY_AUTH_TOKEN": "0" * 64}, "jobs", timeout=120)
    assert code == 1
    assert "refused the token from RAY_AUTH_TOKEN: it is not this cluster's token" in output
    assert "0" * 64 not in output


def test_a_job_that_asks_for_gpus_the_cluster_lacks(stack):
    env, *_, sets = stack
    code, output = ltray(
        env, "submit", "jobs/demo.yaml", *with_sets([*sets, "scaling.use_gpu=true"]), timeout=120
    )
    assert code == 1
    assert re.search(
        r"error: the cluster at http://127\.0\.0\.1:\d+ cannot run jobs/demo\.yaml: scaling asks "
        r"for 2 workers of 1 CPU \+ 1 GPU each \(PACK\); the cluster has 4 CPUs and 0 GPUs on 2 "
        r"node\(s\), room for 0: add GPU nodes",
        output,
    ), output
    assert "submitted" not in output


def test_submit_follow_runs_the_demo_job_through_the_stack_once(stack, tmp_path):
    env, uri, postgres, s3, sets = stack
    # MLflow 3's host check is on: the compose service name passes, another name does not
    assert host_header_status(uri, uri.removeprefix("http://")) == 200
    assert host_header_status(uri, "elsewhere.example:5000") == 403

    spread = [*sets, "scaling.placement_strategy=STRICT_SPREAD", "schedule.epochs=2"]
    code, output = ltray(env, "submit", "jobs/demo.yaml", "--follow", *with_sets(spread))
    assert code == 0, output[-4000:]
    sid = submission_id_in(output)
    assert "[ltray] epoch 1:" in output  # the driver's progress, streamed from the cluster
    assert f"[ltray] job {sid} succeeded" in output
    job = load_job(REPO / "jobs/demo.yaml", spread)
    assert sid == f"ltray-{job.run_name()}"  # derived from the job: the same job, the same id

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("demo")
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["ltray.submission_id"] == sid  # the MLflow run names its Ray job
    placed = dict(item.split("@") for item in run.data.tags["ltray.worker_nodes"].split(","))
    assert len(set(placed.values())) == 2, f"the workers should sit on two nodes: {placed}"
    history = client.get_metric_history(run_id, "train/loss_total")
    assert sorted(m.step for m in history) == [0, 1]
    assert "test/acc" in run.data.metrics and "val/acc_balanced" in run.data.metrics
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
        cursor.execute("SELECT artifact_location FROM experiments WHERE name = 'demo'")
        assert cursor.fetchone()[0].startswith("mlflow-artifacts:")
    # ... the artifacts, the model, the data set and the checkpoints are S3 objects
    artifacts = s3.keys("mlflow/")
    assert any(k.endswith(f"{run_id}/artifacts/final_metrics.json") for k in artifacts)
    assert any(k.endswith(f"{model.model_id}/artifacts/MLmodel") for k in artifacts)
    assert any(k.startswith("data/tiny/train/") for k in s3.keys("data/tiny/"))
    assert "data/tiny/manifest.json" in s3.keys("data/tiny/")
    assert any(k.endswith("state.pt") for k in s3.keys("runs/")), s3.keys("runs/")
    # and the server reads them back from S3 for a client: a file, and the model
    local = client.download_artifacts(run_id, "final_metrics.json", str(tmp_path))
    assert "test/acc" in json.loads(Path(local).read_text())
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)

    # the same job again: refused, and no second job is started
    code, again = ltray(env, "submit", "jobs/demo.yaml", *with_sets(spread), timeout=120)
    assert code == 1
    assert f"already finished on {env['RAY_API_SERVER_ADDRESS']} as {sid}" in again
    code, listing = ltray(env, "jobs", timeout=120)
    assert code == 0, listing
    assert sum(job.run_name() in line for line in listing.splitlines()) == 1, listing
    assert re.search(rf"{sid}\s+SUCCEEDED", listing), listing
    code, log = ltray(env, "logs", "jobs/demo.yaml", timeout=120)
    assert code == 1  # the file names another job without the --set lines: never submitted
    assert "was never submitted" in log
    code, log = ltray(env, "logs", sid, timeout=120)
    assert code == 0 and "[ltray] epoch 1:" in log


def test_a_sweep_file_is_submitted_as_ltray_tune(stack):
    """The shipped tiny sweep over the demo job (both files uploaded, the base found beside it on
    the cluster): two one-epoch trials, nested under one MLflow parent on the stack's server."""
    env, uri, *_, sets = stack
    small = [*sets, "search.trials=2", "scheduler.kind=none", "schedule.epochs=1"]
    code, output = ltray(env, "submit", "jobs/sweeps/tiny.yaml", "--follow", *with_sets(small))
    assert code == 0, output[-4000:]
    sid = submission_id_in(output)
    assert re.search(
        r"submitted ltray-demo-sweep-\w+ to .*: ltray tune jobs/sweeps/tiny\.yaml", output
    )
    assert f"[ltray] job {sid} succeeded" in output
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("demo")
    parent = f"tags.`ltray.run_name` = '{sid.removeprefix('ltray-')}'"
    (sweep_run,) = client.search_runs([experiment.experiment_id], filter_string=parent)
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{sweep_run.info.run_id}'",
    )
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)


def test_stop_ends_a_long_job_and_its_workers_and_resubmit_resumes_it(stack):
    env, *_, sets = stack
    long_job = with_sets([*sets, "schedule.epochs=400", "name=long"])
    code, output = ltray(env, "submit", "jobs/demo.yaml", *long_job, timeout=120)
    assert code == 0, output
    sid = submission_id_in(output)

    def log_has(text: str, job: str) -> bool:  # asked over HTTP: a CLI per poll costs a core
        url = f"{env['RAY_API_SERVER_ADDRESS']}/api/jobs/{job}/logs"
        auth = {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}
        with urllib.request.urlopen(urllib.request.Request(url, headers=auth), timeout=30) as r:
            return text in json.loads(r.read())["logs"]

    # epoch 0's line comes after its checkpoint is stored
    wait_for(lambda: log_has("[ltray] epoch 0:", sid), 300, "the long job's first epoch")
    assert "RayTrainWorker" in alive_actors(env)
    assert train_worker_processes(env)  # the scan below sees this cluster's workers
    code, again = ltray(env, "submit", "jobs/demo.yaml", *long_job, timeout=120)
    assert code == 1 and f"is already running on {env['RAY_API_SERVER_ADDRESS']} as {sid}" in again

    code, output = ltray(env, "stop", sid, timeout=300)
    assert code == 0, output
    assert f"job {sid} stopped; none of its workers live on" in output
    actors = alive_actors(env)
    assert not {"RayTrainWorker", "TrainController"} & set(actors), actors
    wait_for(lambda: not train_worker_processes(env), 60, "the train workers' processes to exit")

    code, output = ltray(env, "submit", "jobs/demo.yaml", *long_job, timeout=120)
    assert code == 1 and "stopped on" in output and "pass --resubmit" in output
    code, output = ltray(env, "submit", "jobs/demo.yaml", "--resubmit", *long_job, timeout=120)
    assert code == 0, output
    second = submission_id_in(output)
    assert second == f"{sid}-2"
    wait_for(
        lambda: log_has("resumes from its checkpoint", second), 300, "the resubmitted run to resume"
    )
    # by its file and --set lines: the latest attempt
    code, output = ltray(env, "stop", "jobs/demo.yaml", *long_job, timeout=300)
    assert code == 0, output
    assert f"job {second} stopped; none of its workers live on" in output
