"""``ltray train JOB.yaml``: one run on Ray (or in this process with ``--local``)."""

from __future__ import annotations

from typing import Annotated

import typer

from ltray.cli.console import JobFile, Overrides, Verbose, exit_on_error, quiet_unless
from ltray.config import JobConfig
from ltray.secrets import public_url


def train(
    job_file: JobFile,
    overrides: Overrides = None,
    local: Annotated[
        bool, typer.Option("--local", help="run the loop in this process, one worker, no Ray")
    ] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="discard this job's checkpoints and start over")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Train a job; running the same job again resumes from its last checkpoint."""
    from ltray.config import load_job
    from ltray.train.launcher import run_job

    with exit_on_error():
        job = load_job(job_file, overrides or [])
    with exit_on_error(job.model_dump()):  # errors from here on can quote the job's secrets
        with quiet_unless(verbose):
            result = run_job(job, local=local, fresh=fresh)
    print_final(result.run_name, result.metrics)
    if capped := smoke_caps(job):
        print(capped)
    for line in where_to_look(job, result.mlflow_run_id):
        print(line)


def print_final(run_name: str, final: dict[str, float]) -> None:
    shown = {k: v for k, v in final.items() if "/acc_class/" not in k}
    print(f"run {run_name} finished")
    for key in sorted(shown):
        value = shown[key]
        print(f"  {key}: {value:.2f}" if isinstance(value, float) else f"  {key}: {value}")


def smoke_caps(job: JobConfig) -> str | None:
    """A line saying that the run's numbers are a smoke test's, where the schedule capped its
    steps or its evaluation: a split's first batches can be one class (test is stored class by
    class), and a capped test accuracy reads like a real one."""
    schedule = job.schedule
    caps = [
        f"schedule.{name}={value}"
        for name, value in (
            ("max_steps_per_epoch", schedule.max_steps_per_epoch),
            ("max_eval_batches", schedule.max_eval_batches),
        )
        if value is not None
    ]
    if not caps:
        return None
    return f"  (capped by {', '.join(caps)}: a smoke test's numbers, not the split's)"


def where_to_look(job: JobConfig, run_id: str | None) -> list[str]:
    """The MLflow run (or, without one, the experiment) and how to open it: ``mlflow ui`` on a
    local store, the server's URL."""
    if not job.tracking.enabled:
        return []
    uri = public_url(job.tracking.uri)
    experiment = f"experiment {job.tracking.experiment}"
    what = f"MLflow run {run_id} ({experiment})" if run_id else f"MLflow {experiment}"
    lines = [f"{what}; look at it with:"]
    if uri.startswith(("http://", "https://")):
        return [*lines, f"    open {uri}"]
    return [*lines, f"    mlflow ui --backend-store-uri {uri}"]
