"""``ltray tune SWEEP.yaml``: a Ray Tune sweep over job keys; ``--best`` shows a past one's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ltray.cli.console import Overrides, Verbose, exit_on_error, quiet_unless

SweepFile = Annotated[Path, typer.Argument(help="sweep YAML, e.g. jobs/sweeps/tiny.yaml")]


def tune(
    sweep_file: SweepFile,
    overrides: Overrides = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="discard this sweep's trials and start it over")
    ] = False,
    best: Annotated[
        bool,
        typer.Option("--best", help="print the leaderboard and best job of the sweep run before"),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="where to write the best trial's job (default NAME-best.yaml)"),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Sweep a job's keys with Ray Tune (ASHA, Optuna); running it again resumes the sweep.

    Override the sweep's keys (--set search.trials=8) or its base job's
    (--set schedule.epochs=20) with --set.
    """
    from ltray.tune import leaderboard
    from ltray.tune.sweep_config import load_sweep

    with exit_on_error():
        sweep = load_sweep(sweep_file, overrides or [])
    with exit_on_error(sweep.base.model_dump()):
        if best:
            from ltray.tune.sweep import load_results

            run_name, rows = load_results(sweep)
            typer.echo(f"sweep {run_name}")
            typer.echo(leaderboard.table(sweep, rows))
            if not leaderboard.is_complete(sweep, rows):
                typer.echo(f"the sweep is not complete: run ltray tune {sweep_file} to finish it")
                raise typer.Exit(1)
            chosen = leaderboard.best_row(rows)
            if chosen is None:
                typer.echo("no trial has a value of the metric yet")
                raise typer.Exit(1)
            typer.echo(leaderboard.best_job_yaml(sweep, chosen, run_name), nl=False)
            return
        from ltray.tune.sweep import run_sweep

        with quiet_unless(verbose):
            outcome = run_sweep(sweep, fresh=fresh, best_out=out)
    typer.echo(f"sweep {outcome.run_name}")
    typer.echo(leaderboard.table(sweep, outcome.rows))
    if outcome.best is not None:
        target = out or Path(f"{sweep.name}-best.yaml")
        typer.echo(
            f"best: trial {outcome.best.trial_id} ({sweep.config.metric.name} "
            f"{outcome.best.value:.2f}); its job: {target}  (ltray train {target})"
        )
    if outcome.parent_run_id:
        typer.echo(
            f"MLflow parent run {outcome.parent_run_id} (experiment "
            f"{sweep.base.tracking.experiment})"
        )
    if not outcome.complete:
        typer.echo(
            "error: the sweep was interrupted; run the same command again to resume", err=True
        )
        raise typer.Exit(130)
