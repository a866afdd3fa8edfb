"""``ltray demo``: the whole path on a small generated data set, with nothing to download.

Prepares the synthetic long-tailed set named by the demo job, with a val split (when it is not
there yet); trains the job's method and its plain cross-entropy baseline (the same recipe, loss
``ce``) on a local Ray (or in-process with ``--local``); runs the tiny sweep over the seed
paper's three knobs (``ltray/jobs/demo_sweep.yaml``, on Ray only) and prints its leaderboard;
evaluates both runs on test (top-5, calibration, the confusion figure, logged to their MLflow
runs); writes the report that sets them side by side by shot group (with the sweep's best
trial); and ends with the table, the report's path and the ``mlflow ui`` command. A second run
reuses what is done: the data set, the finished runs and sweep, the evaluations.

The demo job ships inside the package (``ltray/jobs/demo.yaml``; ``jobs/demo.yaml`` in a
checkout links to it), so ``ltray demo`` works from any folder; its relative paths are relative
to the folder it runs in.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from ltray.cli.console import Verbose, exit_on_error, quiet_unless
from ltray.cli.train import where_to_look
from ltray.config import JobConfig, read_job_yaml, validate_job
from ltray.data import read_manifest
from ltray.errors import LtrayError
from ltray.secrets import redact_url
from ltray.tune.sweep_config import Sweep, build_sweep

if TYPE_CHECKING:
    from ltray.train.launcher import RunResult

VAL_PER_CLASS = 20  # the generated set's balanced val split, what the demo sweep selects on


def demo(
    job: Annotated[
        Path | None, typer.Option(help="a job file to run instead of the packaged demo job")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="train without Ray (and so without the sweep)")
    ] = False,
    sweep: Annotated[
        bool, typer.Option("--sweep/--no-sweep", help="run the tiny sweep after training")
    ] = True,
    verbose: Verbose = False,
) -> None:
    """The whole path on a small generated data set: prepare, train the method and its CE
    baseline, sweep, evaluate, report."""
    with exit_on_error():
        raw = demo_job_mapping(job)
        method_job = validate_job(raw, source=str(job or "the packaged demo job"))
        with quiet_unless(verbose):
            ensure_data_set(method_job)
            runs = [train(j, local=local) for j in with_baseline(raw, method_job)]
            sweep_run = None
            if sweep and not local:
                sweep_run = run_demo_sweep(demo_job_sweep(raw), method_job)
            elif sweep:
                print("[ltray] the sweep runs on Ray: skipped with --local")
            if method_job.tracking.enabled:
                evaluate_runs(method_job, runs)
                finish_with_report(method_job, runs, sweep_run)


def demo_job_mapping(job_file: Path | None = None) -> dict[str, Any]:
    """The given job file, or the demo job packaged with ltray, as the mapping it holds."""
    if job_file is not None:
        return read_job_yaml(job_file)
    return yaml.safe_load((resources.files("ltray.jobs") / "demo.yaml").read_text())


def load_demo_job(job_file: Path | None = None) -> JobConfig:
    """The given job file, or the demo job packaged with ltray."""
    return validate_job(demo_job_mapping(job_file), source=str(job_file or "demo job"))


def demo_job_sweep(job_raw: dict[str, Any]) -> Sweep:
    """The packaged tiny sweep, over the demo job."""
    raw = yaml.safe_load((resources.files("ltray.jobs") / "demo_sweep.yaml").read_text())
    raw["base"] = job_raw
    return build_sweep(raw, "the demo sweep")


def with_baseline(raw: dict[str, Any], job: JobConfig) -> list[JobConfig]:
    """The plain cross-entropy baseline (the job's recipe with loss ``ce``), then the job."""
    if job.loss.name == "ce":
        return [job]
    baseline = copy.deepcopy(raw)
    baseline["name"] = f"{job.name}-ce"
    baseline.setdefault("loss", {})["name"] = "ce"
    return [validate_job(baseline, source="the demo job's CE baseline"), job]


def run_demo_sweep(sweep: Sweep, job: JobConfig) -> str | None:
    """Run (or finish, or show) the tiny sweep; its MLflow parent run's id, if it logged one."""
    from ltray.tune import leaderboard
    from ltray.tune.sweep import run_sweep

    if not read_manifest(job.data.url).has_split(job.data.val_split or "val"):
        shown = redact_url(job.data.url)
        print(f"[ltray] the sweep selects on a val split, and {shown} has none: skipped")
        return None
    best_out = _demo_folder(job) / f"{sweep.name}-best.yaml"
    outcome = run_sweep(sweep, best_out=best_out)
    if not outcome.complete:  # Ctrl-C: Tune saved the sweep's state, a second run resumes it
        raise KeyboardInterrupt
    print(f"[ltray] sweep {outcome.run_name}:")
    print(leaderboard.table(sweep, outcome.rows))
    if outcome.best is not None:
        print(f"[ltray] the best trial's job: {best_out} (ltray train {best_out})")
    return outcome.parent_run_id


def _has_data_set(url: str) -> bool:
    try:
        read_manifest(url)
    except LtrayError:
        return False
    return True


def ensure_data_set(job: JobConfig) -> None:
    if _has_data_set(job.data.url):
        return
    from ltray.data.prepare import prepare, sources

    print(f"[ltray] preparing a generated long-tailed data set at {redact_url(job.data.url)}")
    plan = sources.synthetic(image_size=job.data.image_size, val_per_class=VAL_PER_CLASS)
    result = prepare(plan, job.data.url)
    counts = result.manifest.class_counts("train")
    groups = result.manifest.groups()
    shown = ", ".join(f"{groups.count(g)} {g}" for g in ("many", "medium", "few"))
    print(f"[ltray] {len(counts)} classes ({shown}), train counts {counts}")


def train(job: JobConfig, *, local: bool = False) -> RunResult:
    from ltray.train.launcher import run_job

    print(f"[ltray] training {job.name} ({job.loss.name}, {job.schedule.epochs} epochs)")
    result = run_job(job, local=local)
    accuracy = {k: round(v, 2) for k, v in result.metrics.items() if k.startswith("test/acc")}
    accuracy = {k: v for k, v in accuracy.items() if "/acc_class/" not in k}
    print(f"[ltray] run {result.run_name}: {accuracy}")
    return result


def evaluate_runs(job: JobConfig, runs: list[RunResult], split: str = "test") -> None:
    """``ltray eval`` of each run on ``split``, unless it was evaluated before: the numbers
    and confusion figure go to its MLflow run and to ``ltray-demo/eval/RUN``."""
    from ltray.analysis import evaluation
    from ltray.tracking import RecordedRun, tracking_uri_or_default

    uri = tracking_uri_or_default(job.tracking.uri)
    for run in runs:
        if run.mlflow_run_id is None:
            continue
        recorded = RecordedRun(uri, run.mlflow_run_id)
        logged = recorded.client.get_run(recorded.run_id).data.metrics
        key = f"eval/{split}"
        if f"{key}/acc" in logged:
            numbers, how = logged, "evaluated before"
        else:
            source = evaluation.from_run(recorded)
            report = evaluation.run_evaluation(source, split=split)
            files = evaluation.write_report(report, _demo_folder(job) / "eval" / run.run_name)
            evaluation.log_report(recorded, report, files)
            numbers, how = report.metrics, "evaluated"
        shown = ", ".join(
            f"{name} {numbers[f'{key}/{metric}']:.2f}"
            for name, metric in (("top-1", "acc"), ("top-5", "acc5"), ("ECE", "ece"))
            if f"{key}/{metric}" in numbers
        )
        print(f"[ltray] {how} run {run.run_name} on {split}: {shown}")


def finish_with_report(job: JobConfig, runs: list[RunResult], sweep_run: str | None) -> None:
    """The report over the runs (and the sweep's best trial), its table, where to look."""
    from ltray.analysis import report_page, run_report
    from ltray.tracking import tracking_uri_or_default

    uri = tracking_uri_or_default(job.tracking.uri)
    targets = [r.mlflow_run_id for r in runs if r.mlflow_run_id]
    targets += [sweep_run] if sweep_run else []
    found = run_report.collect(uri, targets, title=f"ltray demo: {job.name}")
    files = report_page.write(uri, found, _demo_folder(job) / "report")
    print("[ltray] test top-1 (%):")
    for line in report_page.text_table(found):
        print(f"    {line}")
    for note in found.notes:
        print(f"[ltray] {note}")
    print(f"[ltray] report: {files['html']} (and {files['markdown'].name})")
    for line in where_to_look(job, None):
        print(f"[ltray] {line}" if not line.startswith(" ") else line)


def _demo_folder(job: JobConfig) -> Path:
    """Where the demo keeps what it writes beside its runs: the storage folder's parent."""
    return Path(job.storage.url).parent if "://" not in job.storage.url else Path(".")
