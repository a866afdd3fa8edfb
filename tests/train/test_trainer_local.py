"""The training loop in-process (``--local``): metrics, checkpoints, exact resume, failures."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from train_support import cpu_run_name, local_state, make_job

from ltray.data import read_manifest
from ltray.errors import LtrayError
from ltray.models import build_model
from ltray.train import trainer as trainer_module
from ltray.train.launcher import run_job


def mlflow_run(job):
    client = mlflow.MlflowClient(job.tracking.uri)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_local_run_logs_every_epoch_and_the_model(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, loss={"name": "dr"}, schedule={"epochs": 3})
    final = run_job(job, local=True).metrics
    assert {"test/acc", "test/acc_medium", "test/acc_few"} <= final.keys()
    client, run = mlflow_run(job)
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_total")]
    assert epochs == [0, 1, 2]
    assert run.data.params["loss.name"] == "dr" and run.data.params["data.storage_options"] == "***"
    assert run.data.tags["ltray.method"] == "dr"
    # artifacts beside the SQLite store, not in some process's working folder
    assert run.info.artifact_uri.startswith(f"{tmp_path}/mlartifacts/")
    assert "decomp/angle_min_deg" in run.data.metrics
    # no validation split in this data set: per-epoch evaluation runs on test, named so
    # the final test metrics are the last epoch's: not logged a second time at step = epochs
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/acc")] == [0, 1, 2]
    assert client.get_metric_history(run.info.run_id, "test/acc")[-1].value == final["test/acc"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "decomposition")}
    assert "decomposition/epoch_0002.json" in artifacts
    saved = client.download_artifacts(run.info.run_id, "decomposition/epoch_0002.json", tmp_path)
    table = json.loads(Path(saved).read_text())["per_class"]
    for key in ("accuracy", "classifier_norm", "feature_norm_mean", "cos_target_mean", "group"):
        assert len(table[key]) == 4, key
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    images = torch.rand(3, 3, 32, 32)
    scores = model(images)
    assert scores.shape == (3, 4)
    # the contract: plain [0, 1] images in (normalisation inside), scaled cosines out
    info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    contract = info.metadata["ltray"]
    assert contract["input"] == {
        "dtype": "float32", "layout": "NCHW", "channels": "RGB", "range": [0.0, 1.0],
        "height": 32, "width": 32,
    }  # fmt: skip
    assert contract["normalization"]["inside_model"] and contract["output"]["kind"] == (
        "scaled cosines"
    )
    assert contract["classes"] == read_manifest(tiny_data).classes
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 32, 32)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 4)
    state = local_state(job)["model"]
    reference = build_model(job.model, 4, head="cosine")
    reference.load_state_dict(state)
    reference.eval()
    mean = torch.tensor(job.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(job.data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        cosines = reference((images - mean) / std).logits
    scale = local_state(job)["criterion"]["margin_ce.fixed_scale"]
    torch.testing.assert_close(scores, scale * cosines, rtol=1e-4, atol=1e-4)  # export vs eager
    # the same job again: already finished, nothing retrained, no second MLflow run
    assert run_job(job, local=True).metrics["test/acc"] == final["test/acc"]
    mlflow_run(job)


def test_each_epoch_logs_where_its_time_went(tiny_data, tmp_path):
    """time/wall_s spans the epoch's training and evaluation and more (the set-up before the
    first epoch, the previous epoch's checkpoint and logs); time/eval_s is on evaluated epochs."""
    job = make_job(
        tiny_data, tmp_path, schedule={"epochs": 3, "eval_every": 2}, tracking={"log_model": False}
    )
    run_job(job, local=True)
    client, run = mlflow_run(job)

    def logged(key):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    wall, train, evaluation = logged("time/wall_s"), logged("train/epoch_s"), logged("time/eval_s")
    assert sorted(wall) == [0, 1, 2] and sorted(evaluation) == [1, 2]  # epoch 1, and the last
    for epoch, seconds in wall.items():
        assert seconds > train[epoch] + evaluation.get(epoch, 0.0) > 0.0, epoch
    history = local_state(job)["history"]  # the checkpoint holds what MLflow holds
    assert [r["time/wall_s"] for r in history] == [wall[e] for e in (0, 1, 2)]


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_ends(
    tiny_data, tmp_path, monkeypatch
):
    sections = {"schedule": {"epochs": 3}, "loss": {"name": "ldam_drw", "drw_epoch": 1}}
    reference = make_job(tiny_data, tmp_path / "a", **sections)
    run_job(reference, local=True)

    crashing = make_job(tiny_data, tmp_path / "b", **sections)
    original = trainer_module.Trainer.train_epoch

    def crash_in_epoch_2(self, epoch):
        if epoch == 2:
            raise RuntimeError("simulated node loss")
        return original(self, epoch)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="simulated"):
        run_job(crashing, local=True)
    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", original)
    run_job(crashing, local=True)

    expected, resumed = local_state(reference)["model"], local_state(crashing)["model"]
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-6)
    client, run = mlflow_run(crashing)
    history = client.get_metric_history(run.info.run_id, "train/loss_total")
    assert sorted(m.step for m in history) == [0, 1, 2]


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_last_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    job = make_job(tiny_data, tmp_path, schedule={"epochs": 3})  # 3 steps an epoch
    original = trainer_module.TrainModule.forward
    calls = []

    def nan_after_three_steps(self, images, labels):
        calls.append(1)
        result = original(self, images, labels)
        if len(calls) > 3:
            result = result._replace(total=result.total * float("nan"))
        return result

    monkeypatch.setattr(trainer_module.TrainModule, "forward", nan_after_three_steps)
    with pytest.raises(LtrayError, match=r"non-finite at epoch 1 step 0"):
        run_job(job, local=True)
    state = local_state(job)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_preflight_names_the_unreachable_tracking_server(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, tracking={"uri": "http://127.0.0.1:9"})
    with pytest.raises(LtrayError, match=r"MLflow server http://127.0.0.1:9 cannot be reached"):
        run_job(job, local=True)


def test_preflight_names_unwritable_storage(tiny_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    job = make_job(tiny_data, tmp_path, storage={"url": str(blocker / "runs")})
    with pytest.raises(LtrayError, match=rf"storage {blocker}/runs is not writable"):
        run_job(job, local=True)


def test_data_set_with_other_class_count_is_refused(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, model={"num_classes": 10})
    with pytest.raises(LtrayError, match=r"has 4 classes but model.num_classes is 10"):
        run_job(job, local=True)


def test_selection_without_a_validation_split_is_refused(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, schedule={"select_by": "val/acc"})
    with pytest.raises(LtrayError, match=r"select_by='val/acc' needs a validation split"):
        run_job(job, local=True)


def test_tracking_none_runs_without_mlflow(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, tracking={"uri": "none"}, schedule={"epochs": 1})
    assert "test/acc" in run_job(job, local=True).metrics
    assert not list(tmp_path.glob("*.db"))


def test_fresh_starts_over_in_a_new_mlflow_run(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, schedule={"epochs": 1}, tracking={"log_model": False})
    run_job(job, local=True)
    run_job(job, local=True, fresh=True)
    client = mlflow.MlflowClient(job.tracking.uri)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    names = sorted(r.data.tags["ltray.run_name"] for r in runs)
    assert len(runs) == 2 and names[1] == names[0] + "@superseded"
    assert local_state(job)["epoch"] == 0  # the fresh run's own checkpoint


def test_bf16_autocast_path_runs_on_the_cpu(tiny_data, tmp_path):
    """The GPU recipe's precision (bf16 autocast) exercised where CI can run it."""
    job = make_job(
        tiny_data,
        tmp_path,
        loss={"name": "dr"},
        scaling={"precision": "bf16"},
        schedule={"epochs": 1},
        tracking={"uri": "none"},
    )
    final = run_job(job, local=True).metrics
    assert 0.0 <= final["test/acc"] <= 100.0


def test_tau_norm_without_a_val_split_is_refused_before_training(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, loss={"name": "tau_norm"})
    with pytest.raises(LtrayError) as info:
        run_job(job, local=True)
    assert str(info.value) == (
        f"tau_norm chooses tau on the validation split, and data set {tiny_data} has none: "
        "prepare one with --val-per-class N, or give loss.decoupled.tau"
    )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_tau_norm_with_a_given_tau_logs_it_and_selects_nothing(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, loss={"name": "tau_norm", "decoupled": {"tau": 0.3}})
    final = run_job(job, local=True).metrics
    assert final["stage2/tau"] == 0.3
    assert "stage2/val_acc" not in final  # no val split: nothing measured, nothing chosen


@pytest.mark.parametrize("method", ["crt", "lws", "weight_balancing"])
def test_the_second_stage_trains_the_head_on_augmented_images_of_a_frozen_backbone(
    tiny_data, tmp_path, monkeypatch, method
):
    import io

    from ltray.train.checkpoint import CHECKPOINT_FILE, load_state

    datasets = []
    original = trainer_module.Trainer._input

    def spy(self, split, train, batch_size=None, sampler=None, workers=None):
        source = original(self, split, train, batch_size, sampler, workers)
        datasets.append((split, train, source.dataset.sampler, source.dataset.batch_size))
        return source

    monkeypatch.setattr(trainer_module.Trainer, "_input", spy)
    decoupled = {"epochs": 2, "batch_size": 32}
    job = make_job(tiny_data, tmp_path, loss={"name": method, "decoupled": decoupled})
    final = run_job(job, local=True).metrics
    assert final["stage2/epochs"] == 2 and final["stage2/train_loss"] > 0
    # stage 2 read augmented (train=True) training images, class-balanced for crt and lws and
    # instance-sampled for weight balancing (its loss balances), in batches of 32
    sampler = "plain" if method == "weight_balancing" else "class_balanced"
    assert ("train", True, sampler, 32) in datasets
    assert ("train", True, "plain", job.optim.batch_size) in datasets  # stage 1
    folder = tmp_path / "runs" / cpu_run_name(job, local=True) / "local"
    stage1, done = sorted(folder.iterdir())  # the last stage-1 checkpoint and the finished run
    assert done.name.endswith("_final")
    before = load_state(io.BytesIO((stage1 / CHECKPOINT_FILE).read_bytes()))["model"]
    after = load_state(io.BytesIO((done / CHECKPOINT_FILE).read_bytes()))["model"]
    for key, value in before.items():  # the backbone, batch-norm statistics included, is frozen
        if not key.startswith("head."):
            torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    assert not torch.equal(after["head.weight"], before["head.weight"])
    if method == "lws":  # the stage-1 rows, each scaled by its class's learned factor
        ratio = after["head.weight"] / before["head.weight"]
        torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5, atol=0)
    if method == "weight_balancing":  # MaxNorm: no row longer than the radius from stage 1
        norms = before["head.weight"].norm(dim=1)
        radius = norms.min() + 0.1 * (norms.max() - norms.min())
        assert final["stage2/max_norm_radius"] == pytest.approx(radius.item(), rel=1e-6)
        assert after["head.weight"].norm(dim=1).max() <= radius * (1 + 1e-6)


def test_images_the_gpu_decoder_refuses_are_counted_and_said_each_epoch(
    tiny_data, tmp_path, monkeypatch, capsys
):
    """The GPU decode path (run on the CPU here) reports the images it decoded on the CPU:
    a per-epoch metric and one line, by reason."""
    import collections

    from ltray.data.gpu_decode import DecodedBatch
    from ltray.data.gpu_decode import decode_batch as real_decode
    from ltray.train import input_path

    def one_png_a_batch(images, device):
        return DecodedBatch(real_decode(images, device).images, collections.Counter(png=1))

    monkeypatch.setattr(input_path, "decode_batch", one_png_a_batch)
    job = make_job(tiny_data, tmp_path, data={"decode": "gpu"}, tracking={"uri": "none"})
    run_job(job, local=True)
    said = [line for line in capsys.readouterr().out.splitlines() if "decoded on the CPU" in line]
    # 3 training batches an epoch (max_steps_per_epoch), one "PNG" each
    assert said == [
        f"[ltray] epoch {e}: 3 images decoded on the CPU, not the GPU (3 png)" for e in (0, 1)
    ]
    history = local_state(job)["history"]
    assert [r["train/decoded_on_cpu"] for r in history] == [3.0, 3.0]
