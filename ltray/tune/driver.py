"""A sweep trial: a Tune function trainable that runs one ``TorchTrainer`` of the usual loop.

This is Ray 2.60's pattern for Train v2 under Tune: Tune runs one driver per trial, the driver
builds the trainer and calls ``fit()``, and the trainer's :class:`EpochReports` callback turns
rank 0's report at the end of each epoch into one Tune result (what ASHA counts). The driver
reserves no CPU: the trainer's workers reserve theirs, and the sweep caps how many trials run
at once so that trials wait in Tune's queue, not as drivers holding resources.

A trial's Train run is named from the sweep and the trial id (no timestamp), in the sweep's
folder, so a trial restored after an interruption continues its own checkpoints and its own
MLflow child run (found again by that name).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from ltray.config import JobConfig
from ltray.fs import join_url
from ltray.secrets import split_secrets
from ltray.tracking import PARENT_TAG, SWEEP_TAG, TRIAL_TAG
from ltray.train.finished_run import final_state
from ltray.train.launcher import run_on_ray, use_gpu_on_cluster
from ltray.train.run_identity import (
    IDENTITY_TAG,
    claim_checkpoint_folder,
    identity_of,
    resolve_job,
)
from ltray.train.storage import Storage
from ltray.tune.search import EPOCHS_DONE
from ltray.tune.sweep_config import Sweep

TRIALS_FOLDER = "trials"  # {storage}/{sweep run}/trials/{trial run}: the trials' Train runs


def trial_run_name(sweep_run: str, trial_id: str) -> str:
    """A trial's Train run (and MLflow child run): the sweep's name and the trial id."""
    return f"{sweep_run}-{trial_id}"


@dataclass(frozen=True)
class TrialPlan:
    """What every trial driver needs (passed with ``tune.with_parameters``, so through Ray's
    object store: none of it, the base job's secrets included, is written to Tune's files)."""

    sweep: Sweep
    sweep_run: str
    num_classes: int
    parent_run_id: str | None

    def trial_run_name(self, trial_id: str) -> str:
        return trial_run_name(self.sweep_run, trial_id)

    def trial_job(self, params: dict[str, Any]) -> JobConfig:
        """The trial's job, its checkpoints in the sweep's folder."""
        job = self.sweep.trial_job(params)
        url = join_url(job.storage.url, f"{self.sweep_run}/{TRIALS_FOLDER}")
        storage = job.storage.model_copy(update={"url": url})
        return job.model_copy(update={"storage": storage})


class EpochReports(TuneReportCallback):
    """Forward rank 0's end-of-epoch reports that hold the sweep's metric to Tune, each with
    ``epochs_done``: one Tune result is one evaluated epoch. The loop's mid-epoch checkpoint
    reports, epochs without an evaluation (``schedule.eval_every``) and its final report (test
    metrics, after the last epoch) stay out of Tune."""

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
        first = metrics[0] if metrics else {}
        if "epoch" not in first or self.metric not in first:
            return
        record = {**first, EPOCHS_DONE: int(first["epoch"]) + 1}
        super().after_report(run_context, [record, *metrics[1:]], checkpoint)


def trial_driver(params: dict[str, Any], plan: TrialPlan) -> None:
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    run_name = plan.trial_run_name(trial_id)
    job = plan.trial_job(params)
    job = resolve_job(
        job,
        world_size=job.scaling.num_workers,
        use_gpu=use_gpu_on_cluster(job),
        num_classes=plan.num_classes,
    )
    identity = dataclasses.replace(identity_of(job), run_name=run_name)
    storage = Storage(job.storage.url, job.storage.storage_options)
    claim_checkpoint_folder(storage, identity)
    finished = final_state(storage, identity, local=False)
    if finished is not None:
        # trained to the end before the sweep was interrupted, but after Tune last saved its
        # state: report the last epoch again instead of training anything
        last = finished["history"][-1]
        ray.tune.report({**last, EPOCHS_DONE: int(last["epoch"]) + 1})
        return
    public, secrets = split_secrets(job.model_dump(mode="json"))
    tags = {
        TRIAL_TAG: trial_id,
        SWEEP_TAG: plan.sweep_run,
        IDENTITY_TAG: identity.as_json(),
    }
    if plan.parent_run_id:
        tags[PARENT_TAG] = plan.parent_run_id
    config = {
        "job": public,
        "secrets": secrets,
        "run_name": run_name,
        "local": False,
        "fresh": False,
        "tags": tags,
    }
    reports = EpochReports(plan.sweep.config.metric.name)
    run_on_ray(job, config, storage, callbacks=[reports], console=False)
