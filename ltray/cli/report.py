"""``ltray report TARGET ...``: methods side by side by shot group, seeds aggregated, with the
analysis figures and every run's provenance, as one HTML page and Markdown
(:mod:`ltray.analysis.run_report`, :mod:`ltray.analysis.report_page`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from ltray.cli.console import TrackingUri, Verbose, exit_on_error, quiet_unless


def report(
    targets: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN_OR_EXPERIMENT_OR_SWEEP...",
            help="MLflow run ids or names, experiment names, sweeps (a sweep shows its best "
            "trial, chosen on val)",
        ),
    ],
    tracking_uri: TrackingUri = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for report.html, report.md and figures/"),
    ] = None,
    title: Annotated[str | None, typer.Option("--title", help="the page's title")] = None,
    verbose: Verbose = False,
) -> None:
    """One HTML page (and Markdown) comparing runs: methods x all / many / medium / few."""
    from ltray.analysis import report_page, run_report
    from ltray.tracking import tracking_uri_or_default

    uri = tracking_uri_or_default(tracking_uri)
    with exit_on_error(), quiet_unless(verbose):
        found = run_report.collect(uri, targets, title)
        folder = out or Path.cwd() / "ltray-report" / _slug(found.title)
        files = report_page.write(uri, found, folder)
    for line in report_page.text_table(found):
        typer.echo(line)
    for note in found.notes:
        typer.echo(f"[ltray] {note}")
    typer.echo(f"[ltray] report: {files['html']} (and {files['markdown'].name}, figures/)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80] or "report"
