"""One run identity: what changes a result names the run, is recorded where the run continues
from, and a run refuses to continue another training's checkpoints or MLflow run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from processes import ltray_executable
from train_support import make_job, run_cli

from ltray.data import read_manifest
from ltray.errors import LtrayError
from ltray.tracking import MlflowTracker
from ltray.train.launcher import absolutize, run_job
from ltray.train.run_identity import (
    IDENTITY_FILE,
    IDENTITY_TAG,
    claim_checkpoint_folder,
    identity_of,
    resolve_job,
)
from ltray.train.storage import Storage


@pytest.fixture(scope="module", autouse=True)
def shut_down_ray_after_the_module():
    """The Ray tests here share the Ray that ``run_job`` starts; it goes with the module."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def resolved(job, world_size=1, use_gpu=False, num_classes=4):
    return resolve_job(job, world_size=world_size, use_gpu=use_gpu, num_classes=num_classes)


def test_world_size_global_batch_and_precision_name_the_run(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, scaling={"num_workers": 2})
    local, ray2 = identity_of(resolved(job, 1)), identity_of(resolved(job, 2))
    assert (local.world_size, local.global_batch, ray2.world_size, ray2.global_batch) == (
        1, 16, 2, 32,
    )  # fmt: skip
    gpu = identity_of(resolved(job, 2, use_gpu=True))
    assert (local.precision, gpu.precision, gpu.device) == ("fp32", "bf16", "cuda")
    assert len({local.run_name, ray2.run_name, gpu.run_name}) == 3
    explicit = make_job(tiny_data, tmp_path, scaling={"num_workers": 2, "precision": "fp32"})
    assert identity_of(resolved(explicit, 2)).run_name == ray2.run_name  # auto = fp32 on a CPU


def test_the_uniformity_gram_precision_is_resolved_before_the_run_is_named(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, loss={"name": "dr"})
    assert job.loss.uniformity.gram_dtype == "auto"
    cpu, gpu = resolved(job, num_classes=8142), resolved(job, use_gpu=True, num_classes=8142)
    assert (cpu.loss.uniformity.gram_dtype, gpu.loss.uniformity.gram_dtype) == ("fp32", "bf16x3")
    few = resolved(job, use_gpu=True, num_classes=4)  # too few classes for tensor cores to pay
    assert few.loss.uniformity.gram_dtype == "fp32"
    fp32 = make_job(tiny_data, tmp_path, loss={"name": "dr", "uniformity": {"gram_dtype": "fp32"}})
    assert resolved(fp32, num_classes=8142).run_name() == cpu.run_name()  # auto = fp32 here
    gpu_fp32 = resolved(fp32, use_gpu=True, num_classes=8142)
    assert gpu_fp32.run_name() != gpu.run_name()  # on a GPU they train differently


def test_a_checkpoint_folder_of_another_training_is_refused_naming_the_difference(
    tiny_data, tmp_path
):
    job = make_job(tiny_data, tmp_path)
    storage = Storage(str(tmp_path / "runs"))
    mine = identity_of(resolved(job, 1))
    claim_checkpoint_folder(storage, mine)  # records it
    recorded = json.loads((tmp_path / "runs" / mine.run_name / IDENTITY_FILE).read_text())
    assert recorded["world_size"] == 1 and recorded["precision"] == "fp32"
    claim_checkpoint_folder(storage, mine)  # the same training continues
    other = json.dumps({**recorded, "world_size": 2, "global_batch": 32})
    (tmp_path / "runs" / mine.run_name / IDENTITY_FILE).write_text(other)
    with pytest.raises(LtrayError) as info:
        claim_checkpoint_folder(storage, mine)
    assert f"checkpoint folder {tmp_path}/runs/{mine.run_name} belongs to another training" in str(
        info.value
    )
    assert "world_size 2 there, 1 here; global_batch 32 there, 16 here" in str(info.value)
    assert str(info.value).endswith("pass --fresh to start over")


def test_checkpoints_without_a_record_are_not_continued(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path)
    storage = Storage(str(tmp_path / "runs"))
    mine = identity_of(resolved(job, 1))
    (tmp_path / "runs" / mine.run_name / "local" / "checkpoint_000000").mkdir(parents=True)
    with pytest.raises(LtrayError, match="holds checkpoints but no record of how they were"):
        claim_checkpoint_folder(storage, mine)


def test_an_mlflow_run_of_another_training_is_refused(tiny_data, tmp_path):
    job = absolutize(make_job(tiny_data, tmp_path))
    mine = identity_of(resolved(job, 1))
    tracker = MlflowTracker(job.tracking.uri, job.tracking.experiment)
    other = json.dumps({**json.loads(mine.as_json()), "precision": "bf16"})
    tracker.start(mine.run_name, {}, {IDENTITY_TAG: other})
    with pytest.raises(LtrayError) as info:
        run_job(job, local=True)
    assert f"MLflow run {tracker.run_id} belongs to another training" in str(info.value)
    assert "precision bf16 there, fp32 here" in str(info.value)
    assert not (tmp_path / "runs" / mine.run_name).exists()  # nothing made before refusing
    run_job(job, local=True, fresh=True)  # --fresh: a new, visibly named run beside the old one
    client = mlflow.MlflowClient(job.tracking.uri)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    names = {r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert names == {mine.run_name, f"{mine.run_name}-fresh1"}


def test_a_local_run_logs_what_it_resolved_and_where_to_look(tiny_data, tmp_path):
    job_file = tmp_path / "job.yaml"
    raw = make_job(tiny_data, tmp_path, schedule={"epochs": 1}).model_dump(mode="json")
    job_file.write_text(yaml.safe_dump(raw))
    output = run_cli("train", str(job_file), "--local")
    job = absolutize(make_job(tiny_data, tmp_path, schedule={"epochs": 1}))
    client = mlflow.MlflowClient(job.tracking.uri)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    params, tags = run.data.params, run.data.tags
    assert params["model.num_classes"] == "4" and params["world_size"] == "1"
    assert params["scaling.num_workers"] == "1" and params["scaling.precision"] == "fp32"
    assert params["scaling.use_gpu"] == "False"
    assert tags["ltray.version"] and tags["mlflow.source.git.commit"]
    assert re.fullmatch(r".+: .+, \d+ cores, \d+ GiB, (no GPU|.+), torch .+", tags["ltray.machine"])
    fingerprint = read_manifest(tiny_data).fingerprint
    assert tags["ltray.dataset.fingerprint"] == fingerprint
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == fingerprint[:36] and dataset.dataset.name == "tiny"
    assert json.loads(tags[IDENTITY_TAG])["world_size"] == 1
    lines = output.splitlines()
    at = lines.index(f"MLflow run {run.info.run_id} (experiment tests); look at it with:")
    assert lines[at + 1] == f"    mlflow ui --backend-store-uri {job.tracking.uri}"


@pytest.mark.slow
def test_more_workers_than_the_cluster_holds_is_refused_in_seconds(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, scaling={"num_workers": 8})
    started = time.monotonic()
    with pytest.raises(LtrayError) as info:
        run_job(job)
    took = time.monotonic() - started
    assert str(info.value).startswith(
        "scaling asks for 8 workers of 1 CPU each (PACK); the cluster"
    )
    assert str(info.value).endswith(
        "room for 2: lower scaling.num_workers or scaling.cpus_per_worker"
    )
    assert took < 60, took  # Ray's own start-up, not its 60 s worker time-out and a hang
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_local_then_ray_never_share_an_mlflow_run_or_checkpoints(tiny_data, tmp_path):
    sections = {
        "scaling": {"num_workers": 2},
        "schedule": {"epochs": 1},
        "tracking": {"log_model": False},
    }
    local = run_job(make_job(tiny_data, tmp_path, **sections), local=True)
    on_ray = run_job(make_job(tiny_data, tmp_path, **sections))
    assert local.run_name != on_ray.run_name
    assert local.mlflow_run_id != on_ray.mlflow_run_id
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(
        [local.run_name, on_ray.run_name]
    )
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for result, world in ((local, "1"), (on_ray, "2")):
        run = client.get_run(result.mlflow_run_id)
        assert run.data.params["world_size"] == world
        history = client.get_metric_history(result.mlflow_run_id, "test/acc")
        assert [m.step for m in history] == [0]  # its own epoch, once


@pytest.mark.slow
def test_ctrl_c_during_start_up_leaves_no_run_folder(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, scaling={"num_workers": 2})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(
        [ltray_executable(), "train", str(job_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 120
    while not list(runs.glob(f"*/{IDENTITY_FILE}")):  # the run is claimed, Ray starts next
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == (
        "error: interrupted; run the same command again to resume"
    )
    assert [p for p in runs.iterdir()] == [], list(runs.rglob("*"))
    assert not any(Path(p).name.startswith("checkpoint_") for p in runs.rglob("*"))
