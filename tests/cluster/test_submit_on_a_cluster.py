"""``ltray submit`` / ``jobs`` / ``logs`` / ``stop`` against a real two-node Ray cluster started
with ``ray start`` (token authentication on, as Ray >= 2.59 sets it up) and a real ``mlflow
server``, run from the repository's root as a user runs them: ``jobs/demo.yaml`` goes through the
job API, its run lands on the server, a second submit is refused, and a stopped job's workers are
gone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from processes import ltray_executable, mlflow_server, ray_cluster, wait_for

from ltray.config import load_job

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
QUICK = ["schedule.max_steps_per_epoch=2", "schedule.max_eval_batches=1", "data.loader_workers=0"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The cluster's environment (its job API in RAY_API_SERVER_ADDRESS), the MLflow server's
    URI, and --set lines that put the demo's data, runs and tracking where every node sees
    them (one machine: absolute paths)."""
    folder = tmp_path_factory.mktemp("stack")
    data = folder / "data"
    subprocess.run(
        [ltray_executable(), "prepare", "synthetic", str(data), "--classes", "4", "--n-max",
         "40", "--imbalance", "4", "--test-per-class", "8", "--val-per-class", "4", "--workers",
         "1"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    with mlflow_server(folder) as (uri, _), ray_cluster(nodes=2, cpus=2) as env:
        sets = [f"data.url={data}", f"storage.url={folder / 'runs'}", f"tracking.uri={uri}", *QUICK]
        yield env, uri, sets


def ltray(env: dict, *args: str, timeout: float = 600) -> tuple[int, str]:
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
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_worker_processes() -> list[str]:
    from processes import command_line

    pids = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [c for c in map(command_line, (int(p.name) for p in pids)) if "RayTrainWorker" in c]


def submission_id_in(output: str) -> str:
    match = re.search(r"submitted (ltray-\S+) to", output)
    assert match, output[-3000:]
    return match.group(1)


def test_token_errors_say_which_and_how(stack, tmp_path):
    env, _, _ = stack
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
    env, _, sets = stack
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


def test_submit_follow_runs_the_demo_job_to_success_once(stack):
    env, uri, sets = stack
    code, output = ltray(env, "submit", "jobs/demo.yaml", "--follow", *with_sets(sets))
    assert code == 0, output[-4000:]
    sid = submission_id_in(output)
    assert "[ltray] epoch 3:" in output  # the driver's progress, streamed from the cluster
    assert f"[ltray] job {sid} succeeded" in output

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("demo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["ltray.submission_id"] == sid  # the MLflow run names its Ray job
    job = load_job(REPO / "jobs/demo.yaml", sets)
    assert sid == f"ltray-{job.run_name()}"  # derived from the job: the same job, the same id
    assert "test/acc" in run.data.metrics and "val/acc_balanced" in run.data.metrics

    # the same job again: refused, and no second job is started
    code, again = ltray(env, "submit", "jobs/demo.yaml", *with_sets(sets), timeout=120)
    assert code == 1
    assert f"already finished on {env['RAY_API_SERVER_ADDRESS']} as {sid}" in again
    code, listing = ltray(env, "jobs", timeout=120)
    assert code == 0, listing
    assert sum(job.run_name() in line for line in listing.splitlines()) == 1, listing
    assert re.search(rf"{sid}\s+SUCCEEDED", listing), listing

    code, log = ltray(env, "logs", "jobs/demo.yaml", *[], timeout=120)
    assert code == 1  # the file names the run without the --set lines: another run, never sent
    assert "was never submitted" in log
    code, log = ltray(env, "logs", sid, timeout=120)
    assert code == 0 and "[ltray] epoch 3:" in log


def test_stop_ends_a_long_job_and_its_workers_and_resubmit_resumes_it(stack):
    env, _, sets = stack
    long_job = with_sets([*sets, "schedule.epochs=400", "name=long"])
    code, output = ltray(env, "submit", "jobs/demo.yaml", *long_job, timeout=120)
    assert code == 0, output
    sid = submission_id_in(output)

    def log_has(text: str, job: str) -> bool:
        return text in ltray(env, "logs", job, timeout=120)[1]

    wait_for(lambda: log_has("[ltray] epoch 2:", sid), 300, "the long job's second epoch")
    assert "RayTrainWorker" in alive_actors(env)
    code, again = ltray(env, "submit", "jobs/demo.yaml", *long_job, timeout=120)
    assert code == 1 and f"is already running on {env['RAY_API_SERVER_ADDRESS']} as {sid}" in again

    code, output = ltray(env, "stop", sid, timeout=300)
    assert code == 0, output
    assert f"job {sid} stopped; none of its workers live on" in output
    actors = alive_actors(env)
    assert not {"RayTrainWorker", "TrainController"} & set(actors), actors
    wait_for(lambda: not train_worker_processes(), 60, "the train workers' processes to exit")

    code, output = ltray(env, "submit", "jobs/demo.yaml", *long_job, timeout=120)
    assert code == 1 and "stopped on" in output and "pass --resubmit" in output
    code, output = ltray(env, "submit", "jobs/demo.yaml", "--resubmit", *long_job, timeout=120)
    assert code == 0, output
    second = submission_id_in(output)
    assert second == f"{sid}-2"
    wait_for(
        lambda: log_has("resumes from its checkpoint", second), 300, "the resubmitted run to resume"
    )
    code, output = ltray(env, "stop", "jobs/demo.yaml", *[], timeout=300)  # by file: never sent
    assert code == 1
    code, output = ltray(env, "stop", second, timeout=300)
    assert code == 0, output
