"""Real sweeps on a real Ray cluster (``ray start``, token authentication on), logging to MLflow.

The sweeps run in this process (so that what Ray keeps after them can be inspected: the job is
still alive) or as ``ltray tune`` (to kill it and run it again). Each trial trains ResNet-32 for
at most 3 epochs of 2 steps.

The interrupted sweep logs to a real ``mlflow server`` through a URI with a password: the
password stays out of everything its three runs write (the sweep's folder: Tune's experiment
state and pickles, the trials' runs; the server's store and artifacts; Ray's session logs;
ltray's log folders; the console).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import yaml
from file_search import files_holding
from processes import COMMAND_TIMEOUT_S, ltray_executable, mlflow_server, ray_cluster
from sweep_support import tiny_job, write_sweep
from train_support import logged_metrics, run_cli

pytestmark = pytest.mark.slow

PASSWORD = "Sekr3t-sweep-Passw0rd"


@pytest.fixture(scope="module")
def cluster():
    """One node of 2 CPUs; yields the environment that reaches it."""
    with ray_cluster(nodes=1, cpus=2) as env:
        yield env


def sweep_in_a_job(cluster: dict, sweep_file: Path, folder: Path) -> dict:
    """Run the sweep as its own Ray job (tests/tune/sweep_in_a_job.py): the outcome, and what
    Ray holds after the sweep while the job is still connected."""
    out = folder / "outcome.json"
    script = Path(__file__).with_name("sweep_in_a_job.py")
    done = subprocess.run(
        [sys.executable, str(script), str(sweep_file), str(folder / "best.yaml"), str(out)],
        cwd=folder,
        env=cluster,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads(out.read_text())


def children_of(client, parent_id: str):
    experiment = client.get_experiment_by_name("sweeps")
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )


def test_an_asha_sweep_nests_its_trials_in_mlflow_and_leaves_nothing_behind(
    cluster, sweep_data, tmp_path
):
    # one trial at a time, on a metric without ties (the tiny val split's accuracies tie
    # often): which trials ASHA stops does not depend on timing
    sweep_file = write_sweep(
        tmp_path,
        sweep_data,
        metric={"name": "val/loss", "mode": "min"},
        max_concurrent_trials=1,
        search={"algorithm": "random", "trials": 4, "seed": 0},
    )
    outcome = sweep_in_a_job(cluster, sweep_file, tmp_path)
    best_file = tmp_path / "best.yaml"
    rows = [SimpleNamespace(**row) for row in outcome["rows"]]
    best = SimpleNamespace(**outcome["best"])

    # ASHA stopped some trials early: they ran fewer epochs than those that finished
    assert outcome["complete"] and len(rows) == 4
    statuses = {row.trial_id: (row.status, row.epochs) for row in rows}
    stopped = [t for t, (status, _) in statuses.items() if status == "stopped early"]
    finished = [t for t, (status, _) in statuses.items() if status == "finished"]
    assert stopped and finished, statuses
    assert all(statuses[t][1] < 3 for t in stopped) and all(statuses[t][1] == 3 for t in finished)

    # the job (this process) is still connected: no trial's actors or placement groups remain,
    # though Tune stopped trials mid-run (Ray keeps a stopped trainer's placement group)
    assert set(outcome["placement_groups"]) <= {"REMOVED"}, outcome["placement_groups"]
    assert not outcome["alive_actors"], outcome["alive_actors"]

    # one MLflow parent; exactly one child per trial, with its sampled values and epochs
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(outcome["parent_run_id"])
    assert parent.data.tags["ltray.run_name"] == outcome["run_name"]
    children = children_of(client, outcome["parent_run_id"])
    by_trial = {c.data.tags["ltray.trial_id"]: c for c in children}
    assert len(children) == len(rows) and set(by_trial) == set(statuses)
    for row in rows:
        child = by_trial[row.trial_id]
        for key, value in row.params.items():
            assert float(child.data.params[key]) == value
        epochs = logged_metrics(client, child.info.run_id)["epoch"]  # no step logged twice
        if row.status == "finished":
            assert sorted(epochs) == [0, 1, 2] and child.info.status == "FINISHED"
            assert "test/acc" in child.data.metrics
        else:  # killed at its rung: its last reported epoch may not have reached MLflow
            assert len(epochs) <= row.epochs and child.info.status == "KILLED"
            assert child.data.tags["ltray.sweep_status"].startswith("stopped early")
        # Tune saw the same val metric as MLflow holds for that epoch
        history = client.get_metric_history(child.info.run_id, "val/loss")
        if row.epochs - 1 in {m.step for m in history}:
            (logged,) = [m.value for m in history if m.step == row.epochs - 1]
            assert math.isclose(logged, row.value, rel_tol=1e-12)

    # the parent holds the leaderboard, its counts and the figure
    artifacts = {a.path for a in client.list_artifacts(outcome["parent_run_id"], "sweep")}
    assert {
        "sweep/leaderboard.md",
        "sweep/best_job.yaml",
        "sweep/metric_vs_knobs.png",
    } <= artifacts
    counts = parent.data.metrics
    assert counts["trials_finished"] == len(finished)
    assert counts["trials_stopped_early"] == len(stopped)
    assert counts["best/val/loss"] == best.value
    figure = Path(client.download_artifacts(outcome["parent_run_id"], "sweep/metric_vs_knobs.png"))
    pixels = np.asarray(__import__("matplotlib.image").image.imread(figure))
    assert pixels.shape[1] > 3 * pixels.shape[0] / 2 and pixels.std() > 0.01  # three panels

    # the best is a trial that trained every epoch, and its job file trains as it is
    assert best.trial_id in finished
    assert best.value == min(r.value for r in rows if r.trial_id in finished)
    promoted = yaml.safe_load(best_file.read_text())
    for key, value in best.params.items():
        section, *rest = key.split(".")
        node = promoted[section]
        for part in rest[:-1]:
            node = node[part]
        assert node[rest[-1]] == value
    output = run_cli("train", str(best_file), "--local")
    assert "finished" in output


def test_an_interrupted_sweep_resumes_without_rerunning_or_duplicating(
    cluster, sweep_data, tmp_path
):
    """Ctrl-C, then a killed driver, then the sweep to its end; the tracking server's password
    is written nowhere."""
    with mlflow_server(tmp_path / "server") as (uri, _):
        outputs = interrupt_kill_and_resume(cluster, sweep_data, tmp_path, uri)
    header = base64.b64encode(f"alice:{PASSWORD}".encode())
    needles = {"password": [PASSWORD.encode()], "basic-auth header": [header]}
    logs = [Path(m) for text in outputs for m in re.findall(r"\[ltray\] logs: (\S+)", text)]
    assert len(logs) == 3 and (logs[-1] / "ray").exists()  # Ray's session logs, linked there
    for output in outputs:
        assert PASSWORD not in output
    for folder in (tmp_path / "runs", tmp_path / "server", *logs):
        assert not files_holding(folder, needles, follow_links=True), folder
    # the promoted job is the user's own job file with the trial's values: it keeps their URI
    (best,) = tmp_path.glob("*-best.yaml")
    assert PASSWORD in best.read_text()


def interrupt_kill_and_resume(cluster: dict, sweep_data: str, tmp_path: Path, uri: str):
    """The sweep, tracked on the server at ``uri`` (a password in the job's URI): interrupted,
    killed, run to its end, each checked; returns the three runs' console output."""
    job = tiny_job(sweep_data, tmp_path)
    job["tracking"]["uri"] = uri.replace("http://", f"http://alice:{PASSWORD}@")
    sweep_file = write_sweep(
        tmp_path, sweep_data, job=job, scheduler={"kind": "none"}, search={"trials": 4, "seed": 1}
    )
    command = [ltray_executable(), "tune", str(sweep_file)]

    # Ctrl-C (SIGINT to the foreground process group) after the first epoch: Tune saves the
    # sweep; ltray says it was interrupted, shows no trial as finished and promotes none
    ctrl_c = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=cluster,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    before = []
    for line in ctrl_c.stdout:
        before.append(line)
        if " epoch 1/3" in line:
            os.killpg(ctrl_c.pid, signal.SIGINT)
            break
    out, err = ctrl_c.communicate(timeout=300)
    out = "".join(before) + out
    assert ctrl_c.returncode == 130, out + err
    assert "error: the sweep was interrupted; run the same command again to resume" in err
    table_rows = [line for line in out.splitlines() if re.match(r"\w+_\d{5} ", line)]
    assert table_rows and all(line.endswith("unfinished") for line in table_rows), out
    assert not list(tmp_path.glob("*-best.yaml"))

    first = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=cluster,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    finished: list[str] = []
    epochs_seen: dict[str, int] = {}
    killed_output = []
    try:
        for line in first.stdout:
            killed_output.append(line)
            words = line.split()
            if line.startswith("[ltray] trial") and words[3] == "epoch":
                epochs_seen[words[2]] = int(words[4].split("/")[0])
            if line.startswith("[ltray] trial") and words[3] == "finished":
                finished.append(words[2])
            if finished and any(0 < n < 3 for t, n in epochs_seen.items() if t not in finished):
                break  # a trial done, another in the middle of its epochs: kill the sweep
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    (sweep_folder,) = (tmp_path / "runs").glob("tiny-*")

    def checkpoints(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint_"))

    # what the kill left: trials trained to the end (a final checkpoint on disk), and trials
    # interrupted after an epoch Tune had heard of (so its checkpoint was committed: a
    # checkpoint folder alone may be one Ray Train had not registered, and rightly ignores)
    folders = {p.name.rsplit("-", 1)[-1]: p for p in (sweep_folder / "trials").iterdir()}
    trained = {t: checkpoints(folder) for t, folder in folders.items()}
    done = {t: names for t, names in trained.items() if any("_final" in n for n in names)}
    interrupted = [t for t in epochs_seen if t not in done]
    assert done and interrupted, (trained, epochs_seen)

    second = subprocess.run(
        command,
        cwd=tmp_path,
        env=cluster,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert "restoring it" in output
    # the trials that had finished did not train again: no new checkpoint, no epoch line
    for trial, names in done.items():
        (folder,) = (sweep_folder / "trials").glob(f"*-{trial}")
        assert checkpoints(folder) == names, trial
        assert f"trial {trial} epoch 1/" not in output
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweeps")
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`ltray.kind` = 'sweep'"
    )
    children = children_of(client, parent.info.run_id)
    trial_ids = [c.data.tags["ltray.trial_id"] for c in children]
    assert len(trial_ids) == 4 == len(set(trial_ids))  # no second run for a restored trial
    for child in children:
        epochs = logged_metrics(client, child.info.run_id)["epoch"]  # each epoch once
        assert sorted(epochs) == [0, 1, 2] and child.info.status == "FINISHED"
        trial = child.data.tags["ltray.trial_id"]
        if trial in interrupted:  # it continued from its checkpoint, not from scratch
            assert child.data.tags.get("ltray.resumed_at", "").startswith("epoch "), (
                trial,
                epochs_seen,
                trained,
                output,
            )
    rows = [line for line in second.stdout.splitlines() if line.split()[-1:] == ["finished"]]
    assert len(rows) >= 4
    return [out + err, "".join(killed_output), output]


def test_a_seeded_tpe_sweep_draws_what_optuna_draws(cluster, sweep_data, tmp_path):
    """Optuna's TPE (multivariate, seeded) through Ray's integration: the trials' values are
    those a fresh study with the same sampler asks for (the first ten are its seeded random
    start-up draws, whatever the results)."""
    import optuna

    job = tiny_job(sweep_data, tmp_path)
    job["schedule"]["epochs"] = 1
    sweep_file = write_sweep(
        tmp_path,
        sweep_data,
        job=job,
        search={"algorithm": "optuna", "trials": 2, "seed": 7},  # one wave on 2 CPUs
        scheduler={"kind": "none"},
        space={
            "loss.margin": {"uniform": [0.0, 0.5]},
            "loss.uniformity.weight": {"loguniform": [0.001, 1.0]},
            "loss.uniformity.kind": {"choice": ["mhe_s1", "gaussian"]},
        },
    )
    outcome = sweep_in_a_job(cluster, sweep_file, tmp_path)
    assert outcome["complete"] and [r["status"] for r in outcome["rows"]] == ["finished"] * 2

    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=7, multivariate=True), direction="maximize"
    )
    distributions = {
        "loss.margin": optuna.distributions.FloatDistribution(0.0, 0.5),
        "loss.uniformity.weight": optuna.distributions.FloatDistribution(0.001, 1.0, log=True),
        "loss.uniformity.kind": optuna.distributions.CategoricalDistribution(
            ["mhe_s1", "gaussian"]
        ),
    }
    expected = [study.ask(distributions).params for _ in range(2)]
    drawn = [row["params"] for row in outcome["rows"]]
    assert sorted(map(repr, drawn)) == sorted(map(repr, expected))

    # later: the leaderboard and the best job again, read from the sweep's folder, no Ray
    shown = run_cli("tune", str(sweep_file), "--best")
    assert f"sweep {outcome['run_name']}" in shown
    assert (
        f"# promoted from sweep {outcome['run_name']}, trial {outcome['best']['trial_id']}" in shown
    )

    # --fresh: a new sweep (new trials, a new parent run) where the old one was
    done = subprocess.run(
        [ltray_executable(), "tune", str(sweep_file), "--fresh"],
        cwd=tmp_path,
        env=cluster,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "restoring" not in done.stdout
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("sweeps")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`ltray.kind` = 'sweep'"
    )
    names = sorted(p.info.run_name for p in parents)
    assert names == [outcome["run_name"], f"{outcome['run_name']}-fresh1"]
    old = {c.data.tags["ltray.trial_id"] for c in children_of(client, outcome["parent_run_id"])}
    (new_parent,) = [p for p in parents if p.info.run_id != outcome["parent_run_id"]]
    new = {c.data.tags["ltray.trial_id"] for c in children_of(client, new_parent.info.run_id)}
    assert len(old) == len(new) == 2 and not old & new


def test_a_sweep_the_cluster_cannot_hold_is_refused_before_any_trial(cluster, sweep_data, tmp_path):
    sweep_file = write_sweep(tmp_path, sweep_data, scaling={"num_workers": 3})
    done = subprocess.run(
        [ltray_executable(), "tune", str(sweep_file)],
        cwd=tmp_path,
        env=cluster,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "3 workers" in errors[0] and "room for 2" in errors[0]
    assert not any((tmp_path / "runs").glob("tiny-*"))
