"""``ltray analyze RUN [RUN ...]``: the logit decomposition over training, as figures, several
runs overlaid (:mod:`ltray.analysis.analyze`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ltray.cli.console import TrackingUri, Verbose, exit_on_error, quiet_unless


def analyze(
    runs: Annotated[
        list[str],
        typer.Argument(metavar="RUN...", help="MLflow run ids; several are overlaid"),
    ],
    epochs: Annotated[
        str | None,
        typer.Option(
            "--epochs",
            help="comma-separated epochs to draw, e.g. 0,9 (as training numbers them); a "
            "negative one counts from a run's last evaluated epoch (-1: the last) "
            "[default: the first evaluated and the last]",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for the figures (default: ./ltray-analysis/NAMES)"),
    ] = None,
    tracking_uri: TrackingUri = None,
    log: Annotated[
        bool,
        typer.Option(
            "--log/--no-log", help="also log the figures to each run, under analysis/FOLDER"
        ),
    ] = True,
    verbose: Verbose = False,
) -> None:
    """Draw what training logged each epoch: classifier norm, feature norm and cosine per
    class against its training count, the angles between classifier rows, per-class
    accuracy."""
    from ltray.analysis.analyze import ANALYSIS_FOLDER, history_of, write_analysis
    from ltray.tracking import RecordedRun, tracking_uri_or_default

    uri = tracking_uri_or_default(tracking_uri)
    with exit_on_error():
        chosen = _parse_epochs(epochs)
        with quiet_unless(verbose):
            run_ids = list(dict.fromkeys(runs))  # each run once, in the order given
            recorded = [RecordedRun(uri, run_id) for run_id in run_ids]
            histories = [history_of(run) for run in recorded]
            names = "+".join(run.run_name for run in recorded)
            folder = out or Path.cwd() / "ltray-analysis" / names
            files = write_analysis(histories, folder, chosen)
            artifact_folder = f"{ANALYSIS_FOLDER}/{folder.resolve().name}"
            if log:
                for run in recorded:
                    for path in files:
                        run.log_file(path, artifact_folder)
    for path in files:
        typer.echo(str(path))
    if log:
        ids = ", ".join(h.run_id for h in histories)
        typer.echo(f"[ltray] logged them to MLflow run(s) {ids} under {artifact_folder}/")


def _parse_epochs(text: str | None) -> list[int] | None:
    from ltray.errors import LtrayError

    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise LtrayError(
            f"--epochs takes comma-separated integers, e.g. 0,-1; got {text!r}"
        ) from None
