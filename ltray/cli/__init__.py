"""The ``ltray`` command: one module per command group (prepare, train, demo).

Each subcommand validates its input at the edge and prints one clear ``error: ...`` line
(exit 1) for anything the user can get wrong (:func:`ltray.cli.console.exit_on_error`).
"""

from __future__ import annotations

import typer

from ltray.cli import demo, train
from ltray.cli.prepare import app as prepare_app

app = typer.Typer(
    name="ltray",
    help="Train long-tailed image classifiers: prepare data sets, train, and a demo of both.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(prepare_app, name="prepare", help="Write a data set as Parquet shards.")
app.command()(train.train)
app.command()(demo.demo)


def main() -> None:  # pragma: no cover - console entry point
    app()
