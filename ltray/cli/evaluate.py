"""``ltray eval RUN_ID_OR_CHECKPOINT``: a trained model's top-1, top-5 and calibration on a
split, overall and per shot group, with a confusion figure (:mod:`ltray.analysis.evaluation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ltray.cli.console import Overrides, TrackingUri, Verbose, exit_on_error, quiet_unless


def eval_(
    target: Annotated[
        str,
        typer.Argument(
            metavar="RUN_OR_CHECKPOINT",
            help="an MLflow run id, or a checkpoint: a run folder in storage, one of its "
            "checkpoint_* folders or a state.pt (a path or fsspec URL)",
        ),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="evaluate this data set instead of the job's (same classes, in order)"
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="the split to evaluate")] = "test",
    tau_norm: Annotated[
        bool,
        typer.Option(
            "--tau-norm",
            help="also evaluate with tau-normalised classifier rows, tau chosen on the val split",
        ),
    ] = False,
    tracking_uri: TrackingUri = None,
    log_to: Annotated[
        str | None,
        typer.Option(
            "--log-to", help="MLflow run to log the numbers and figures to (default: the input run)"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for metrics.json and the figures (default: ./eval-RUN)"),
    ] = None,
    job_file: Annotated[
        Path | None,
        typer.Option(
            "--job", help="the checkpoint's job file, instead of the one its MLflow run recorded"
        ),
    ] = None,
    overrides: Overrides = None,
    verbose: Verbose = False,
) -> None:
    """Evaluate a trained model: top-1, top-5 and ECE, overall and many / medium / few."""
    from ltray.analysis import evaluation
    from ltray.config import load_job
    from ltray.tracking import RecordedRun, tracking_uri_or_default

    job = None
    with exit_on_error():
        if overrides and job_file is None:
            raise _error("--set changes the job given with --job; there is none")
        if job_file is not None:
            job = load_job(job_file, overrides or [])
    uri = tracking_uri_or_default(tracking_uri)
    with exit_on_error(job.model_dump() if job else None):
        with quiet_unless(verbose):
            source = evaluation.open_source(target, uri, job, data)
            log_run = RecordedRun(uri, log_to) if log_to else source.run
            report = evaluation.run_evaluation(source, data, split, tau_norm)
            folder = out or Path.cwd() / f"eval-{source.name}"
            files = evaluation.write_report(report, folder)
            if log_run is not None:
                evaluation.log_report(log_run, report, files)
    for line in evaluation.table(report):
        typer.echo(line)
    typer.echo(f"[ltray] wrote {', '.join(p.name for p in files)} to {folder}")
    if log_run is not None:
        typer.echo(f"[ltray] logged eval/{split}/... to MLflow run {log_run.run_id}")


def _error(message: str) -> Exception:
    from ltray.errors import LtrayError

    return LtrayError(message)
