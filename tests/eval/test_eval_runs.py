"""``ltray eval`` on a trained run: its checkpoint and its MLflow run give training's numbers,
the run gets the eval metrics and figure, tau-norm chooses tau on val only, and every bad
input is one ``error:`` line."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from data_support import error_line
from PIL import Image
from typer.testing import CliRunner

from ltray.analysis import evaluation
from ltray.cli import app

# the same counts through the same arithmetic: equal; the mean CE of float32 logits summed in
# float64 over the same batches: equal too, allowed a float32 rounding of slack
COUNTED = ("acc", "acc_balanced", "acc_many", "acc_medium", "acc_few")


def ltray_eval(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def ok(*args: str) -> str:
    result = ltray_eval(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def one_error(*args: str) -> str:
    return error_line(ltray_eval(*args))


def assert_training_numbers(metrics: dict[str, float], final: dict[str, float]) -> None:
    for name in COUNTED:
        assert metrics[f"eval/test/{name}"] == final[f"test/{name}"], name
    per_class = [k for k in final if k.startswith("test/acc_class/")]
    assert per_class
    for key in per_class:
        assert metrics[f"eval/{key}"] == final[key], key
    loss, expected = metrics["eval/test/loss"], final["test/loss"]
    assert loss == pytest.approx(expected, rel=float(torch.finfo(torch.float32).eps) * 8)


def eval_metrics_logged(trained) -> dict[str, float]:
    run = mlflow.MlflowClient(trained.tracking_uri).get_run(trained.run_id)
    return {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}


def test_the_checkpoint_gives_the_numbers_training_gave(trained, tmp_path):
    logged_before = eval_metrics_logged(trained)
    out = tmp_path / "out"
    stdout = ok(str(trained.run_folder), "--tracking-uri", trained.tracking_uri, "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert_training_numbers(metrics, trained.final)
    for key in ("acc5", "acc5_many", "ece", "ece_few"):
        assert f"eval/test/{key}" in metrics, key
    assert metrics["eval/test/acc5"] == 100.0  # 4 classes: the true one is always in the top 5
    assert "overall" in stdout and "top-5" in stdout and "ECE" in stdout
    # a checkpoint names no run to log to (no --log-to): nothing logged
    assert eval_metrics_logged(trained) == logged_before
    # its state.pt and its checkpoint folder are the same checkpoint
    states = sorted(trained.run_folder.glob("local/checkpoint_*/state.pt"))
    out2 = tmp_path / "out2"
    ok(str(states[-1]), "--tracking-uri", trained.tracking_uri, "--out", str(out2))
    assert json.loads((out2 / "metrics.json").read_text()) == metrics


def test_the_run_id_gives_the_same_numbers_and_logs_them_with_the_figure(
    trained, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.tracking_uri)  # the default store
    ok(trained.run_id)
    out = tmp_path / f"eval-{trained.run_name}"  # the default folder
    metrics = json.loads((out / "metrics.json").read_text())
    assert_training_numbers(metrics, trained.final)

    client = mlflow.MlflowClient(trained.tracking_uri)
    logged = client.get_run(trained.run_id).data.metrics
    for key, value in metrics.items():
        if value is not None:  # NaN in MLflow, null in metrics.json
            assert logged[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    artifacts = [a.path for a in client.list_artifacts(trained.run_id, "eval")]
    assert "eval/confusion_test.png" in artifacts
    png = client.download_artifacts(trained.run_id, "eval/confusion_test.png", str(tmp_path))
    image = Image.open(io.BytesIO(Path(png).read_bytes())).convert("L")
    low, high = image.getextrema()
    assert image.size[0] > 100 and high - low > 100  # drawn: not one flat colour


def test_tau_norm_chooses_tau_on_val_only(trained, tmp_path, monkeypatch):
    read: list[str] = []
    features = evaluation.Evaluator.features

    def spy(self, split):
        read.append(split)
        return features(self, split)

    monkeypatch.setattr(evaluation.Evaluator, "features", spy)
    out = tmp_path / "out"
    stdout = ok(
        str(trained.run_folder), "--tracking-uri", trained.tracking_uri,
        "--tau-norm", "--out", str(out),
    )  # fmt: skip
    assert read == ["val"]  # tau is selected on val's features, never on test's
    metrics = json.loads((out / "metrics.json").read_text())
    assert_training_numbers(metrics, trained.final)  # the plain numbers are unchanged

    # the tau reported is the one val's balanced accuracy picks over the job's grid
    source = evaluation.open_source(str(trained.run_folder), trained.tracking_uri)
    val = evaluation.Evaluator.create(source, trained.data, _manifest(trained.data))
    val_f, val_y = features(val, "val")
    grid = source.job.loss.decoupled.tau_grid
    tau, scores = evaluation.choose_tau(source.model.head, val_f, val_y, grid, val.scores)
    assert metrics["eval/test_taunorm/tau"] == tau
    assert metrics["eval/test_taunorm/val_acc_balanced"] == scores[tau]
    assert {"eval/test_taunorm/acc", "eval/test_taunorm/acc_few", "eval/test_taunorm/ece"} <= set(
        metrics
    )
    assert (out / "confusion_test_taunorm.png").is_file()
    assert f"tau-norm (tau={tau:g}, chosen on val)" in stdout


def _manifest(url: str):
    from ltray.data import read_manifest

    return read_manifest(url)


def _copy_data(trained, tmp_path: Path, edit) -> str:
    """A copy of the data set with its manifest edited by ``edit(manifest_dict)``."""
    copy = tmp_path / "data-copy"
    shutil.copytree(trained.data, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return str(copy)


def test_bad_inputs_are_one_line_each(trained, tmp_path):
    uri = trained.tracking_uri
    missing_run = "0" * 32
    assert one_error(missing_run, "--tracking-uri", uri) == (
        f"error: no MLflow run '{missing_run}' in {uri}"
    )
    # a server's credentials are never shown
    line = one_error(missing_run, "--tracking-uri", "http://eval-user:s3cret-77@127.0.0.1:9")
    assert "s3cret-77" not in line and "http://***@127.0.0.1:9" in line
    missing = tmp_path / "nowhere"
    assert one_error(str(missing), "--tracking-uri", uri) == (
        f"error: checkpoint {missing} does not exist"
    )
    assert "has no split 'nope' (it has " in one_error(
        trained.run_id, "--tracking-uri", uri, "--split", "nope"
    )


def test_a_checkpoint_of_another_architecture_is_refused(trained, tmp_path):
    from ltray.config import ModelConfig
    from ltray.models import build_model

    uri = trained.tracking_uri
    # the job says resnet10, the checkpoint holds resnet32
    line = one_error(
        str(trained.run_folder), "--job", str(trained.job_file), "--set", "model.arch=resnet10",
        "--tracking-uri", uri,
    )  # fmt: skip
    assert "is not the job's model (model.arch=resnet10, a linear head, 4 classes)" in line
    # the checkpoint holds resnet10, its run's job says resnet32
    states = sorted(trained.run_folder.glob("local/checkpoint_*/state.pt"))
    state = torch.load(states[-1], weights_only=True)
    state["model"] = build_model(ModelConfig(arch="resnet10"), 4).state_dict()
    other = tmp_path / "other" / "state.pt"
    other.parent.mkdir()
    torch.save(state, other)
    line = one_error(str(other), "--tracking-uri", uri)
    assert line.startswith(f"error: checkpoint {other} is not the job's model (model.arch=resnet32")


def test_a_data_set_with_other_classes_or_without_val_is_refused(trained, tmp_path):
    uri = trained.tracking_uri
    classes = _manifest(trained.data).classes

    def rename(manifest):
        manifest["classes"][2] = "zebra"

    renamed = _copy_data(trained, tmp_path / "a", rename)
    assert one_error(trained.run_id, "--tracking-uri", uri, "--data", renamed) == (
        f"error: data set {renamed} has other classes than the model: its class 2 is 'zebra', "
        f"the model's is {classes[2]!r} (same classes, same order needed)"
    )

    def drop_val(manifest):
        manifest["splits"].pop("val")

    no_val = _copy_data(trained, tmp_path / "b", drop_val)
    line = one_error(trained.run_id, "--tracking-uri", uri, "--data", no_val, "--tau-norm")
    assert line.startswith(f"error: data set {no_val} has no split 'val' (--tau-norm chooses")


def test_the_job_file_can_replace_the_recorded_job(trained, tmp_path):
    raw = yaml.safe_load(trained.job_file.read_text())
    raw["tracking"] = {"uri": "none"}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    ok(str(trained.run_folder), "--job", str(job), "--out", str(out))
    assert_training_numbers(json.loads((out / "metrics.json").read_text()), trained.final)


def test_a_checkpoint_logs_where_log_to_says(trained, tmp_path):
    out = tmp_path / "out"
    ok(
        str(trained.run_folder), "--tracking-uri", trained.tracking_uri, "--split", "val",
        "--log-to", trained.run_id, "--out", str(out),
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    client = mlflow.MlflowClient(trained.tracking_uri)
    logged = client.get_run(trained.run_id).data.metrics
    assert logged["eval/val/acc"] == metrics["eval/val/acc"]
    # the last epoch's val evaluation saw the same model: the same numbers
    for name in COUNTED:
        last = client.get_metric_history(trained.run_id, f"val/{name}")[-1].value
        assert metrics[f"eval/val/{name}"] == last, name
    assert "eval/confusion_val.png" in [
        a.path for a in client.list_artifacts(trained.run_id, "eval")
    ]
    assert (
        one_error(
            str(trained.run_folder), "--tracking-uri", trained.tracking_uri, "--log-to", "f" * 32
        )
        == f"error: no MLflow run '{'f' * 32}' in {trained.tracking_uri}"
    )


def test_eval_reads_through_training_input_paths_a_held_split_decoded_once(trained, monkeypatch):
    """A job that holds its data on the device (here the CPU device) is evaluated from the held
    set, read and decoded once however often the split is passed over, with the numbers the
    streamed path gives."""
    from ltray.train import input_path

    source = evaluation.open_source(str(trained.run_folder), trained.tracking_uri)
    manifest = evaluation.read_manifest(trained.data)
    streamed = evaluation.Evaluator.create(source, trained.data, manifest).run("test")
    held_sets = []
    real = input_path.DeviceImageSet

    def counted(*args, **kwargs):
        held_sets.append(real(*args, **kwargs))
        return held_sets[-1]

    monkeypatch.setattr(input_path, "DeviceImageSet", counted)
    data = source.job.data.model_copy(update={"on_device": True})
    source.job = source.job.model_copy(update={"data": data})
    evaluator = evaluation.Evaluator.create(source, trained.data, manifest)
    first, again = evaluator.run("test"), evaluator.run("test")
    features, labels = evaluator.features("test")
    assert len(held_sets) == 1 and evaluator.inputs["test"].path == "device"
    for passed in (first, again):
        for name in ("correct", "seen", "correct_top5", "calibration"):
            assert torch.equal(getattr(passed.counts, name), getattr(streamed.counts, name))
        assert torch.equal(torch.cat(passed.predicted), torch.cat(streamed.predicted))
    assert torch.equal(labels, torch.cat(streamed.labels)) and len(features) == len(labels)
