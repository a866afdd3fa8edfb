"""What the user sees: ltray's own lines, one ``error: ...`` line for anything they can get
wrong, and (unless ``--verbose``) the libraries' chatter kept in log files (:mod:`ltray.logs`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from ltray import logs
from ltray.errors import LtrayError
from ltray.secrets import scrub

JobFile = Annotated[Path, typer.Argument(help="job YAML, e.g. jobs/cifar10_lt.yaml")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a key: --set loss.margin=0.3 (repeatable)"),
]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="the MLflow store holding the runs (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db)",
    ),
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="show Ray's and the libraries' logs here, not in log files"
    ),
]


@contextlib.contextmanager
def quiet_unless(verbose: bool) -> Iterator[Path | None]:
    """Keep library chatter in a new log folder (its path printed once) unless ``verbose``."""
    with logs.capture(verbose) as folder:
        if folder is not None:
            typer.echo(f"[ltray] logs: {folder}")
        yield folder


@contextlib.contextmanager
def exit_on_error(secrets_in: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Turn an LtrayError into ``error: <one line>`` on stderr and exit code 1.

    URL credentials, and the secrets in ``secrets_in`` (storage options, or a whole job dump),
    are scrubbed from the message; Ctrl-C exits 130.
    """
    try:
        yield
    except LtrayError as exc:
        line = " ".join(scrub(str(exc), secrets_in).split()) or "failed"
        typer.echo(f"error: {line}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted; run the same command again to resume", err=True)
        raise typer.Exit(130) from None
