"""Exact resume in ``--local`` mode: a crash inside an epoch resumes at the batch after the last
mid-epoch checkpoint and ends with an uninterrupted run's weights and metrics; the final
metrics and the model reach MLflow once whatever the crash point."""

from __future__ import annotations

import mlflow
import pytest
import torch
from train_support import (
    assert_logged_as_finished,
    assert_same_metrics,
    assert_same_training,
    local_state,
    logged_metrics,
    make_job,
)

from ltray.errors import LtrayError
from ltray.train import trainer as trainer_module
from ltray.train.launcher import run_job
from ltray.train.session import LocalSession

EPOCHS = 2
STEPS = 12  # 89 rows in batches of 8: 11 full batches and one of 1


def resume_job(data: str, folder):
    """dr with a learned scale and a learned ring radius, warm-up then cosine, 2 loader
    workers, a checkpoint every 3 steps."""
    return make_job(
        data,
        folder,
        data={"loader_workers": 2},
        loss={"name": "dr", "learn_scale": True, "norm": {"kind": "ring", "radius": None}},
        optim={"batch_size": 8},
        schedule={
            "epochs": EPOCHS,
            "warmup_epochs": 1,
            "kind": "cosine",
            "max_steps_per_epoch": None,
        },
        storage={"checkpoint_every_steps": 3},
        tracking={"log_model": False},
    )


def the_run(job):
    client = mlflow.MlflowClient(job.tracking.uri)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


@pytest.fixture
def dropout_in_training(monkeypatch):
    """Model-side randomness: dropout on the input of every training step, drawn from torch's
    global generator, which a resume must restore to the step."""
    original = trainer_module.TrainModule.forward
    calls = {"n": 0, "crash_at": None}

    def forward(self, images, labels):
        calls["n"] += 1
        if calls["n"] == calls["crash_at"]:
            calls["crash_at"] = None
            raise RuntimeError("simulated node loss")
        return original(self, torch.nn.functional.dropout(images, 0.2), labels)

    monkeypatch.setattr(trainer_module.TrainModule, "forward", forward)
    return calls


def test_crash_inside_an_epoch_resumes_at_its_batch_and_ends_like_an_uninterrupted_run(
    odd_data, tmp_path, dropout_in_training
):
    reference = resume_job(odd_data, tmp_path / "a")
    run_job(reference, local=True)
    assert dropout_in_training["n"] == EPOCHS * STEPS

    crashing = resume_job(odd_data, tmp_path / "b")
    dropout_in_training.update(n=0, crash_at=STEPS + 5)  # epoch 1, step 4
    with pytest.raises(RuntimeError, match="simulated"):
        run_job(crashing, local=True)
    saved = local_state(crashing)
    # resubmitted with other loader workers (the same run): the epoch ends with the 2 it began
    # with, since the batch order depends on them
    data = crashing.data.model_copy(update={"loader_workers": 0})
    run_job(crashing.model_copy(update={"data": data}), local=True)

    # the same float32 operations in the same order: anything beyond rounding is a resume bug
    resumed = local_state(crashing)
    assert_same_training(local_state(reference), resumed)
    client, run = the_run(crashing)
    assert_logged_as_finished(client, run.info.run_id, resumed)
    # the resumed epoch's loss sums the steps before the checkpoint and after it
    reference_client, reference_run = the_run(reference)
    want = logged_metrics(reference_client, reference_run.info.run_id)
    assert_same_metrics(want, logged_metrics(client, run.info.run_id))
    # the crash came at epoch 1 step 4; the resume started at the checkpoint after step 2, so
    # steps 3 and 4 ran twice, the epoch's first three once
    assert saved["stream"] == {"epoch": 1, "batch": 3, "loader_workers": 2}
    assert run.data.tags["ltray.resumed_at"] == "epoch 1 batch 3"
    assert dropout_in_training["n"] == EPOCHS * STEPS + 2


@pytest.mark.parametrize("when", ["before", "after"])
def test_final_metrics_and_model_are_logged_once_around_a_crash_at_the_last_checkpoint(
    tiny_data, tmp_path, monkeypatch, when
):
    """A crash just before the finished run's checkpoint is written (the rerun recomputes the
    final metrics) or just after it (the rerun finds the run finished)."""
    job = make_job(tiny_data, tmp_path, schedule={"epochs": 1})
    original = LocalSession.report

    def crash_around_final(self, metrics, state):
        final = state is not None and state["final"]
        if final and when == "before":
            raise RuntimeError("simulated node loss")
        original(self, metrics, state)
        if final and when == "after":
            raise RuntimeError("simulated node loss")

    monkeypatch.setattr(LocalSession, "report", crash_around_final)
    with pytest.raises(RuntimeError, match="simulated"):
        run_job(job, local=True)
    monkeypatch.setattr(LocalSession, "report", original)
    final = run_job(job, local=True).metrics

    client, run = the_run(job)
    assert run.info.status == "FINISHED"
    assert_logged_as_finished(client, run.info.run_id, local_state(job))
    assert logged_metrics(client, run.info.run_id)["test/acc"] == {0: final["test/acc"]}
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert len(models) == 1


def test_a_split_smaller_than_the_workers_is_refused_before_training(tiny_data, tmp_path):
    job = make_job(tiny_data, tmp_path, scaling={"num_workers": 97})
    with pytest.raises(LtrayError, match=r"'train' has 96 rows, fewer than scaling.num_workers=97"):
        run_job(job)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_loader_leaves_torchs_global_generator_alone(tiny_data):
    from ltray.data.stream import StreamingImageDataset, make_loader

    dataset = StreamingImageDataset(tiny_data, "train", batch_size=32)
    before = torch.get_rng_state()
    for workers in (0, 2):
        assert len(list(make_loader(dataset, num_workers=workers))) == 3
    assert torch.equal(torch.get_rng_state(), before)


def test_a_run_starts_the_next_epochs_loader_before_asking_for_that_epoch(
    odd_data, tmp_path, monkeypatch
):
    """With loader processes, epoch 1's loader starts while epoch 0 trains, and epoch 1 reads
    from it; the last epoch starts none after it."""
    from ltray.train.input_path import SplitInput

    events: list[tuple[int, str, int]] = []
    asked, opened = SplitInput.epoch, SplitInput._open

    def epoch(self, number, start_batch=0, **kw):
        events.append((id(self), "ask", number))
        return asked(self, number, start_batch, **kw)

    def open_(self, number, start_batch):
        events.append((id(self), "open", number))
        return opened(self, number, start_batch)

    monkeypatch.setattr(SplitInput, "epoch", epoch)
    monkeypatch.setattr(SplitInput, "_open", open_)
    run_job(resume_job(odd_data, tmp_path), local=True)
    first = next(source for source, kind, number in events if kind == "ask")  # training's
    assert [(kind, n) for source, kind, n in events if source == first] == [
        ("ask", 0), ("open", 0), ("open", 1), ("ask", 1)
    ]  # fmt: skip


def test_a_run_that_fails_stops_the_loader_it_started_for_the_next_epoch(
    odd_data, tmp_path, monkeypatch
):
    """The failure comes after epoch 0's steps, when epoch 1's loader processes already run;
    they stop with the run, not when the failed run's objects are collected."""
    import multiprocessing

    from ltray.train.input_path import SplitInput
    from ltray.train.trainer import Trainer

    opened = []
    open_ = SplitInput._open
    monkeypatch.setattr(SplitInput, "_open", lambda self, *a: opened.append(a) or open_(self, *a))

    def fail_after_training(self, epoch, train_metrics):
        assert len(multiprocessing.active_children()) == 2  # epoch 1's loader, started ahead
        raise RuntimeError("simulated failure after epoch 0's steps")

    monkeypatch.setattr(Trainer, "_epoch_record", fail_after_training)
    with pytest.raises(RuntimeError, match="simulated") as failed:
        run_job(resume_job(odd_data, tmp_path), local=True)
    assert (1, 0) in opened
    assert multiprocessing.active_children() == []
    assert failed.traceback  # the run's frames, and so its inputs, are still referenced here
