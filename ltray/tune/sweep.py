"""``ltray tune SWEEP.yaml``: one Ray Tune experiment whose trials each run a ``TorchTrainer``.

Before any trial starts, everything that can be checked is (the sweep file, the base job's data,
storage and tracking as ``ltray train`` checks them, the metric against what training reports
on the val split, the cluster against one trial's workers). Then:

- one MLflow parent run for the sweep (its trials' runs nest under it, see
  :mod:`ltray.tune.driver`), which ends up holding the leaderboard, a figure of the metric
  against each knob and the best trial's job file;
- the experiment lives in ``{storage}/{sweep run}``; running the same sweep again restores it
  (``Tuner.restore``): finished trials are not rerun, unfinished ones continue from their
  checkpoints; ``--fresh`` discards it and starts over.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ltray.data import Manifest
from ltray.data.profiles import shot_groups
from ltray.errors import LtrayError
from ltray.secrets import redact, redact_url
from ltray.tracking import BEST_TRIAL_TAG, SWEEP_KIND_TAG, MlflowTracker
from ltray.train.launcher import (
    absolutize,
    check_cluster_fits,
    preflight,
    ray_init,
    steady_cwd,
    use_gpu_on_cluster,
    worker_capacity,
)
from ltray.train.session import PLACEMENT_GROUP_KEY, say
from ltray.train.storage import Storage
from ltray.tune import leaderboard
from ltray.tune.driver import TrialPlan, trial_driver, trial_run_name
from ltray.tune.leaderboard import FINISHED, TrialRow
from ltray.tune.search import EPOCHS_DONE, num_samples, param_space, scheduler, search_algorithm
from ltray.tune.sweep_config import Sweep

# a trial's driver waits on its trainer's workers, which reserve the CPUs and GPUs: it reserves
# no CPU (a fraction would leave a node's last worker slot short), only memory for its process
DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}
STATUS_TAG = "ltray.sweep_status"  # on a child run: finished, stopped early at epoch N, error


@dataclass(frozen=True)
class SweepOutcome:
    run_name: str
    rows: list[TrialRow]
    best: TrialRow | None
    complete: bool  # every trial ended (finished, stopped early or failed)
    parent_run_id: str | None
    best_job: str | None  # the best trial's job file, as written


def with_absolute_paths(sweep: Sweep) -> Sweep:
    """The sweep with its base job's local paths made absolute (trials run in other folders,
    and the sweep's name must not depend on how a path was spelled)."""
    job = absolutize(sweep.base)
    raw = copy.deepcopy(sweep.base_raw)
    raw.setdefault("data", {})["url"] = job.data.url
    raw.setdefault("storage", {})["url"] = job.storage.url
    raw.setdefault("tracking", {})["uri"] = job.tracking.uri
    if job.tracking.artifact_location:
        raw["tracking"]["artifact_location"] = job.tracking.artifact_location
    return Sweep(sweep.config, raw, sweep.source)


def check_metric(sweep: Sweep, manifest: Manifest) -> None:
    """The metric is one that training reports each epoch on the val split."""
    from ltray.train.evaluate import EvalCounts

    name, job = sweep.config.metric.name, sweep.base
    where = f"{sweep.source}: metric.name {name!r}"
    if not name.startswith("val/"):
        raise LtrayError(
            f"{where}: a sweep selects on the val split only; use a val/ metric "
            "(e.g. val/acc_balanced, val/acc, val/acc_few, val/loss)"
        )
    val = job.data.val_split or "val"
    if not manifest.has_split(val):
        raise LtrayError(
            f"{where}: data set {redact_url(job.data.url)} has no {val!r} split to select on "
            "(prepare one with --val-per-class N)"
        )
    train_counts = manifest.class_counts(job.data.train_split)
    groups = shot_groups(train_counts, job.data.many_threshold, job.data.few_threshold)
    counts = EvalCounts.empty(manifest.num_classes)
    counts.seen += 1.0
    reported = set(counts.metrics(groups, manifest.classes, "val"))
    if name not in reported and not name.startswith("val/loss_"):
        common = [k for k in sorted(reported) if "/acc_class/" not in k]
        raise LtrayError(
            f"{where}: training does not report it on this data set; it reports "
            f"{', '.join(common)} (and val/acc_class/<class>, val/loss_<term>)"
        )


def trials_at_once(sweep: Sweep, use_gpu: bool) -> int:
    """``max_concurrent_trials``: given, or as many trials as the cluster holds at once."""
    if sweep.config.max_concurrent_trials:
        return sweep.config.max_concurrent_trials
    scaling = sweep.base.scaling
    return max(1, worker_capacity(scaling, use_gpu) // scaling.num_workers)


def experiment_location(sweep: Sweep) -> tuple[str, Any]:
    """(the Tune experiment's path, its pyarrow filesystem or None for local paths)."""
    job = sweep.base
    path, filesystem = Storage(job.storage.url, job.storage.storage_options).pyarrow_filesystem()
    return f"{path.rstrip('/')}/{sweep.run_name}", filesystem


def run_sweep(sweep: Sweep, *, fresh: bool = False, best_out: Path | None = None) -> SweepOutcome:
    import ray.tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables on the console
    written = sweep
    sweep = with_absolute_paths(sweep)
    job = sweep.base
    manifest = preflight(job)
    check_metric(sweep, manifest)
    ray_init()
    use_gpu = use_gpu_on_cluster(job)
    check_cluster_fits(job.scaling, use_gpu)
    storage = Storage(job.storage.url, job.storage.storage_options)
    run_name = sweep.run_name
    if fresh and storage.exists(run_name):
        storage.remove(run_name)
    path, filesystem = experiment_location(sweep)
    restoring = ray.tune.Tuner.can_restore(path, storage_filesystem=filesystem)

    parent = None
    if job.tracking.enabled:
        parent = MlflowTracker(job.tracking.uri, job.tracking.experiment)
        parent.start(run_name, sweep_params(sweep), {SWEEP_KIND_TAG: "sweep"}, fresh=fresh)
    plan = TrialPlan(sweep, run_name, manifest.num_classes, parent.run_id if parent else None)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(trial_driver, plan=plan), DRIVER_RESOURCES
    )
    if restoring:
        say(f"[ltray] sweep {run_name}: restoring it from {redact_url(path)}")
        tuner = ray.tune.Tuner.restore(
            path,
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            storage_filesystem=filesystem,
        )
    else:
        concurrency = trials_at_once(sweep, use_gpu)
        say(
            f"[ltray] sweep {run_name}: {sweep.config.search.trials} trials "
            f"({sweep.config.search.algorithm}, scheduler {sweep.config.scheduler.kind}), "
            f"{concurrency} at a time"
        )
        tuner = _new_tuner(sweep, trainable, path, filesystem, concurrency, parent)
    try:
        with steady_cwd():
            tuner.fit()  # returns after the last trial, or after a Ctrl-C (Tune saves its state)
    except BaseException:
        if parent is not None:
            parent.finish("KILLED")
        raise
    rows = read_rows(sweep, path, filesystem)
    complete = leaderboard.is_complete(sweep, rows)
    best = leaderboard.best_row(rows) if complete else None
    best_job = None
    if best is not None:
        best_job = leaderboard.best_job_yaml(written, best, run_name)
        target = Path(best_out or f"{written.name}-best.yaml")
        target.write_text(best_job)
    if parent is not None:
        if complete:
            log_to_parent(parent, written, rows, best, run_name)
        parent.finish("FINISHED" if complete else "KILLED")
    return SweepOutcome(run_name, rows, best, complete, parent.run_id if parent else None, best_job)


def _new_tuner(
    sweep: Sweep, trainable: Any, path: str, filesystem: Any, concurrency: int, parent: Any
) -> Any:
    import ray.tune

    metric = sweep.config.metric
    tracking = None
    if parent is not None:  # the public URI only: Tune pickles its callbacks to storage
        tracking = (parent.uri, parent.experiment)
    return ray.tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        tune_config=ray.tune.TuneConfig(
            metric=metric.name,
            mode=metric.mode,
            search_alg=search_algorithm(sweep, concurrency),
            scheduler=scheduler(sweep),
            num_samples=num_samples(sweep),
            max_concurrent_trials=concurrency
            if sweep.config.search.algorithm == "optuna"
            else None,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=ray.tune.RunConfig(
            name=sweep.run_name,
            storage_path=path.rsplit("/", 1)[0],
            storage_filesystem=filesystem,
            failure_config=ray.tune.FailureConfig(max_failures=0),
            callbacks=[
                TrialLines(sweep.run_name, metric.name, sweep.base.schedule.epochs, tracking)
            ],
            verbose=0,
        ),
    )


def sweep_params(sweep: Sweep) -> dict[str, Any]:
    """The parent run's params: the search and the space, readable in the MLflow UI."""
    config = sweep.config
    params: dict[str, Any] = {
        "base_job": sweep.base.run_name(),
        "search.algorithm": config.search.algorithm,
        "search.trials": config.search.trials,
        "search.seed": config.search.seed,
        "scheduler.kind": config.scheduler.kind,
        "metric.name": config.metric.name,
        "metric.mode": config.metric.mode,
        "scaling.num_workers": sweep.base.scaling.num_workers,
    }
    if config.scheduler.kind == "asha":
        params["scheduler.grace_epochs"] = config.scheduler.grace_epochs
        params["scheduler.reduction_factor"] = config.scheduler.reduction_factor
    for key, domain in config.space.items():
        params[f"space.{key}"] = f"{domain.kind} {domain.values}"
    return params


def log_to_parent(
    parent: MlflowTracker, sweep: Sweep, rows: list[TrialRow], best: TrialRow | None, run_name: str
) -> None:
    """The leaderboard (table and metrics), the figure and the best trial's job file."""
    metric = sweep.config.metric.name
    counts: dict[str, float] = {}
    for row in rows:
        key = f"trials_{row.status.replace(' ', '_')}"
        counts[key] = counts.get(key, 0.0) + 1.0
    if best is not None and best.value is not None:
        counts[f"best/{metric}"] = best.value
        counts["best/epochs"] = float(best.epochs)
    # at step = trials ended so far; a sweep shown again unchanged (a second `ltray tune` of a
    # finished sweep) logs nothing twice
    ended = sum(1 for row in rows if row.status != leaderboard.NOT_RUN)
    logged = parent.client.get_run(parent.run_id).data.metrics
    if any(logged.get(key) != value for key, value in counts.items()):
        parent.log_metrics(ended, counts)
    with tempfile.TemporaryDirectory() as folder:
        files = {
            "leaderboard.md": leaderboard.table(sweep, rows, markdown=True) + "\n",
            "leaderboard.txt": leaderboard.table(sweep, rows) + "\n",
        }
        if best is not None:
            promoted = leaderboard.best_job_yaml(sweep, best, run_name)
            files["best_job.yaml"] = redacted_job_yaml(promoted)
        for name, text in files.items():
            (Path(folder) / name).write_text(text)
            parent.log_file(Path(folder) / name, "sweep")
        if any(r.value is not None for r in rows):
            figure = Path(folder) / "metric_vs_knobs.png"
            leaderboard.figure(sweep, rows, figure, run_name)
            parent.log_file(figure, "sweep")
    if best is not None:
        parent.set_tags({BEST_TRIAL_TAG: best.trial_id})


def redacted_job_yaml(text: str) -> str:
    """The job file as MLflow may keep it: secrets (storage options, URL credentials) masked."""
    import yaml

    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    return header + yaml.safe_dump(redact(yaml.safe_load(text)), sort_keys=False)


def load_results(sweep: Sweep) -> tuple[str, list[TrialRow]]:
    """(the sweep's run name, its leaderboard), of a sweep run before (``ltray tune --best``),
    read from its folder."""
    import ray.tune

    sweep = with_absolute_paths(sweep)
    path, filesystem = experiment_location(sweep)
    if not ray.tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        raise LtrayError(
            f"no sweep {sweep.run_name} at {redact_url(path)}: run `ltray tune "
            f"{sweep.source}` first (a changed sweep or base job is another sweep)"
        )
    return sweep.run_name, read_rows(sweep, path, filesystem)


def read_rows(sweep: Sweep, path: str, filesystem: Any) -> list[TrialRow]:
    """The leaderboard, from the experiment's state as Tune saved it."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(path, storage_filesystem=filesystem)
    return leaderboard.rows_from_results(sweep, analysis)


class TrialLines(Callback):
    """In the ``ltray tune`` process: a line per trial event on the console, and the MLflow
    child runs of trials that Tune ended from outside (stopped early, failed) closed with
    their status."""

    def __init__(
        self, sweep_run: str, metric: str, epochs: int, tracking: tuple[str, str] | None
    ) -> None:
        self.sweep_run = sweep_run
        self.metric = metric
        self.epochs = epochs
        self.tracking = tracking

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        knobs = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        say(f"[ltray] trial {trial.trial_id} started: {knobs}")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        value = result.get(self.metric)
        shown = f"{value:.2f}" if isinstance(value, int | float) else "-"
        epochs = result.get(EPOCHS_DONE, "?")
        say(f"[ltray] trial {trial.trial_id} epoch {epochs}/{self.epochs}: {self.metric} {shown}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        release_placement_group(trial)
        epochs = int((trial.last_result or {}).get(EPOCHS_DONE, 0))
        if epochs >= self.epochs:
            say(f"[ltray] trial {trial.trial_id} {FINISHED}")
            self._close(trial, "FINISHED", FINISHED)
            return
        say(f"[ltray] trial {trial.trial_id} stopped early after {epochs}/{self.epochs} epochs")
        self._close(trial, "KILLED", f"stopped early after epoch {epochs}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        release_placement_group(trial)
        say(f"warning: trial {trial.trial_id} failed; the leaderboard shows why")
        self._close(trial, "FAILED", "error")

    def _close(self, trial: Any, status: str, note: str) -> None:
        if self.tracking is None:
            return
        try:
            tracker = MlflowTracker(*self.tracking)
            run_name = trial_run_name(self.sweep_run, trial.trial_id)
            tracker.close_run(run_name, status, {STATUS_TAG: note})
        except Exception as exc:  # the sweep goes on; the run's status is only cosmetic
            say(f"warning: could not update the MLflow run of trial {trial.trial_id}: {exc}")


def release_placement_group(trial: Any) -> None:
    """Remove the placement group of the trial's Train run, if it outlived the trial.

    A run that ends by itself removes its own; but when Tune stops a trial (ASHA) or it fails,
    Tune kills the trial's driver, and Ray kills the trainer's actors with it but keeps their
    placement group (it belongs to the job, here this process) and its CPUs and GPUs, on
    which later trials would wait forever."""
    import ray
    from ray.util.placement_group import PlacementGroup

    found = (trial.last_result or {}).get(PLACEMENT_GROUP_KEY)
    if not found:
        return
    group = PlacementGroup(ray.PlacementGroupID.from_hex(found))
    if ray.util.placement_group_table(group).get("state") not in (None, "REMOVED"):
        ray.util.remove_placement_group(group)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
