"""The ``ltray`` command. Each subcommand validates its input at the edge and prints one clear
``error: ...`` line (exit 1) for anything the user can get wrong (``exit_on_error``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ltray.cli_prepare import app as prepare_app
from ltray.cli_prepare import exit_on_error

app = typer.Typer(
    name="ltray",
    help="Train long-tailed image classifiers: prepare data sets, train, sweep, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(prepare_app, name="prepare", help="Write a data set as Parquet shards.")


@app.command()
def train(
    job_file: Annotated[Path, typer.Argument(help="job YAML, e.g. jobs/cifar10_lt.yaml")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a key: --set loss.margin=0.3 (repeatable)"),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="run the loop in this process, one worker, no Ray")
    ] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="discard this job's checkpoints and start over")
    ] = False,
) -> None:
    """Train a job; running the same job again resumes from its last checkpoint."""
    from ltray.config import load_job
    from ltray.train.launcher import run_job

    with exit_on_error():
        job = load_job(job_file, overrides or [])
        result = run_job(job, local=local, fresh=fresh)
    _print_final(result.run_name, result.metrics)


def _print_final(run_name: str, final: dict[str, float]) -> None:
    shown = {k: v for k, v in final.items() if "/acc_class/" not in k}
    print(f"run {run_name} finished")
    for key in sorted(shown):
        value = shown[key]
        print(f"  {key}: {value:.2f}" if isinstance(value, float) else f"  {key}: {value}")


@app.command()
def demo(
    job: Annotated[Path, typer.Option(help="the demo job file")] = Path("jobs/demo.yaml"),
    local: Annotated[bool, typer.Option("--local", help="train without Ray")] = False,
) -> None:
    """The whole path on a small generated data set: prepare, train, and where to look."""
    from ltray.demo import run_demo

    with exit_on_error():
        run_demo(job, local=local)


def main() -> None:  # pragma: no cover - console entry point
    app()
