"""A run that trained to the end, given again: answered on the driver from its final
checkpoint, without starting a worker, its MLflow run left as a finished run's."""

from __future__ import annotations

import io

import mlflow
import pytest
from train_support import logged_metrics, make_job

from ltray.errors import LtrayError
from ltray.train import launcher
from ltray.train.checkpoint import CHECKPOINT_FILE, save_state
from ltray.train.finished_run import final_state
from ltray.train.run_identity import RunIdentity, claim_checkpoint_folder
from ltray.train.storage import Storage

IDENTITY = RunIdentity("t-0123abcd", world_size=2, global_batch=32, precision="fp32", device="cpu")


def write_checkpoint(storage: Storage, folder: str, state: dict) -> None:
    buffer = io.BytesIO()
    save_state(state, buffer)
    storage.write_bytes(f"{folder}/{CHECKPOINT_FILE}", buffer.getvalue())


def tracked_elsewhere(job, folder):
    """The same job tracked in a new MLflow store (tracking does not name the run)."""
    tracking = job.tracking.model_copy(update={"uri": f"sqlite:///{folder}/b.db"})
    return job.model_copy(update={"tracking": tracking})


def ray_layout(tmp_path) -> Storage:
    """A Ray run's folder as the loop leaves it: the identity record, an epoch's checkpoint and
    the final one (Ray's names: the stream position, ``_final``, a time)."""
    storage = Storage(str(tmp_path / "runs"))
    claim_checkpoint_folder(storage, IDENTITY)
    run = IDENTITY.run_name
    write_checkpoint(storage, f"{run}/checkpoint_000001_000000-11", {"final": {}, "history": [1]})
    final = {"final": {"test/acc": 50.0}, "history": [1, 2]}
    write_checkpoint(storage, f"{run}/checkpoint_000002_000000_final-12", final)
    return storage


def test_the_final_checkpoint_is_found_where_the_loop_would_restore_it(tmp_path):
    storage = ray_layout(tmp_path)
    state = final_state(storage, IDENTITY, local=False)
    assert state["final"] == {"test/acc": 50.0} and state["history"] == [1, 2]
    assert final_state(storage, IDENTITY, local=True) is None  # a --local run's are in RUN/local
    # another training's folder is refused, not answered from
    other = RunIdentity(IDENTITY.run_name, 1, 16, "fp32", "cpu")
    with pytest.raises(LtrayError, match="belongs to another training"):
        final_state(storage, other, local=False)
    # a folder without this ltray's identity record: nothing read (the launcher's claim decides)
    assert final_state(Storage(str(tmp_path / "elsewhere")), IDENTITY, local=False) is None


def test_a_final_checkpoint_cut_short_is_left_to_the_loop(tmp_path):
    """A process killed while the final checkpoint was written: not an answer; the loop then
    restores what Ray registered and finishes from there."""
    storage = ray_layout(tmp_path)
    path = f"{IDENTITY.run_name}/checkpoint_000002_000000_final-12/{CHECKPOINT_FILE}"
    storage.write_bytes(path, storage.read_bytes(path)[:100])
    assert final_state(storage, IDENTITY, local=False) is None


def test_a_finished_run_given_again_starts_no_worker_and_heals_its_mlflow_run(
    tiny_data, tmp_path, monkeypatch, capsys
):
    job = make_job(tiny_data, tmp_path, tracking={"log_model": False})
    configs = []
    real_loop = launcher.train_loop

    def recorded_loop(config):
        configs.append(config)
        real_loop(config)

    monkeypatch.setattr(launcher, "train_loop", recorded_loop)
    first = launcher.run_job(job, local=True)
    client = mlflow.MlflowClient(job.tracking.uri)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED"
    # where and with what it trained (made distinct here: this test trains and answers on one
    # machine with one ltray)
    trained_with = {
        "ltray.worker_nodes": run.data.tags["ltray.worker_nodes"],
        "ltray.machine": "the training's machine",
        "ltray.version": "0.0.1",
        "mlflow.source.git.commit": "0" * 40,
    }
    for key, value in trained_with.items():
        client.set_tag(first.mlflow_run_id, key, value)
    # as a process killed after its final checkpoint, before it ended its MLflow run, leaves it
    client.update_run(first.mlflow_run_id, status="RUNNING")

    def no_worker(config):
        raise AssertionError("a finished run started its training loop")

    monkeypatch.setattr(launcher, "train_loop", no_worker)
    capsys.readouterr()
    again = launcher.run_job(job, local=True)
    assert f"[ltray] run {first.run_name} already finished" in capsys.readouterr().out
    assert again == first
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert {key: run.data.tags[key] for key in trained_with} == trained_with  # kept

    # the loop keeps its own answer, for Ray restoring the final checkpoint after a worker
    # failed on the way out
    (config,) = configs
    config = {key: value for key, value in config.items() if key != "result"}
    real_loop(config)
    assert config["result"] == first.metrics
    assert f"[ltray] run {first.run_name} already finished" in capsys.readouterr().out

    # the same run tracked in a new store (tracking does not name the run): its epochs and
    # final metrics are logged there from the checkpoint, under the same run name
    moved = tracked_elsewhere(job, tmp_path)
    answered = launcher.run_job(moved, local=True)
    assert answered.run_name == first.run_name and answered.metrics == first.metrics
    new_client = mlflow.MlflowClient(moved.tracking.uri)
    new_run = new_client.get_run(answered.mlflow_run_id)
    assert new_run.info.status == "FINISHED" and not set(trained_with) & set(new_run.data.tags)
    assert new_run.data.tags["ltray.identity"] == run.data.tags["ltray.identity"]
    old = logged_metrics(client, first.mlflow_run_id)
    new = logged_metrics(new_client, answered.mlflow_run_id)
    assert new == old and set(new) >= {"epoch", "train/loss_total", "test/acc"}
    assert new_run.data.tags["ltray.final_logged"] == "metrics"
    assert "final_metrics.json" in {a.path for a in new_client.list_artifacts(new_run.info.run_id)}
    # and once: given again, nothing is logged twice
    launcher.run_job(moved, local=True)
    assert logged_metrics(new_client, answered.mlflow_run_id) == new


def test_a_store_that_lacks_the_run_gets_its_final_metrics_once(val_data, tmp_path):
    """With a val split the epochs log val metrics and the test metrics come once at the end
    (at the last epoch's step): a finished run tracked in a new store gets them there from the
    final checkpoint, as the loop logged them, and only once."""
    job = make_job(val_data, tmp_path, tracking={"log_model": False})
    first = launcher.run_job(job, local=True)
    client = mlflow.MlflowClient(job.tracking.uri)
    old = logged_metrics(client, first.mlflow_run_id)
    assert old["test/acc"] == {job.schedule.epochs - 1: first.metrics["test/acc"]}
    assert "val/acc" in old

    moved = tracked_elsewhere(job, tmp_path)
    for _ in range(2):
        answered = launcher.run_job(moved, local=True)
        new_client = mlflow.MlflowClient(moved.tracking.uri)
        assert logged_metrics(new_client, answered.mlflow_run_id) == old
