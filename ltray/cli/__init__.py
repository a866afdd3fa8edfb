"""The ``ltray`` command: one module per command group (prepare, train, tune, eval,
analyze, report, submit/jobs/stop/logs, config, demo).

Each subcommand validates its input at the edge and prints one clear ``error: ...`` line
(exit 1) for anything the user can get wrong (:func:`ltray.cli.console.exit_on_error`).
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import typer

from ltray.cli import analyze, demo, evaluate, report, show_config, submit, train, tune
from ltray.cli.prepare import app as prepare_app

app = typer.Typer(
    name="ltray",
    help="Train long-tailed image classifiers: prepare data sets, train, sweep, evaluate, "
    "submit to a cluster, run the demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(prepare_app, name="prepare", help="Write a data set as Parquet shards.")
app.command()(train.train)
app.command()(tune.tune)
app.command(name="eval")(evaluate.eval_)
app.command()(analyze.analyze)
app.command()(report.report)
app.command()(submit.submit)
app.command()(submit.jobs)
app.command()(submit.stop)
app.command()(submit.logs)
app.command()(show_config.config)
app.command()(demo.demo)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ltray {version('ltray')}")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print ltray's version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Train long-tailed image classifiers: prepare data sets, train, show a job, run the demo."""


def main() -> None:  # pragma: no cover - console entry point
    app()
