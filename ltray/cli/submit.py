"""``ltray submit`` / ``jobs`` / ``stop`` / ``logs``: jobs on a Ray cluster, through its job API.

The plain Ray way works as well:
``ray job submit --address http://HEAD:8265 --working-dir . -- ltray train jobs/inat18.yaml``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ltray import logs as log_files
from ltray.cli.console import Overrides, Verbose, exit_on_error, quiet_unless

Address = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="the head's dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, or an "
        "http:// $RAY_ADDRESS)",
    ),
]
JobRef = Annotated[
    str,
    typer.Argument(
        help="a submission id (ltray jobs lists them), or the job/sweep file with the --set "
        "lines it was submitted with (its latest attempt)"
    ),
]
Follow = Annotated[
    bool, typer.Option("--follow", "-f", help="stream the log until the job ends; exit with it")
]


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Ray's job client logs each file it packs and each socket it closes: to the log file."""
    with quiet_unless(verbose) as folder:
        if folder is not None:
            import ray.job_submission  # noqa: F401 - sets Ray's logger up, to adopt it

            log_files.adopt("ray")
        yield


def _write(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


def _follow_to_the_end(cluster, sid: str) -> None:  # noqa: ANN001 - Cluster, imported late
    from ltray.cluster.submission import follow, status_of

    try:
        info = follow(cluster, sid, _write)
    except KeyboardInterrupt:
        typer.echo(
            f"\n[ltray] stopped following; job {sid} goes on on the cluster: "
            f"ltray logs {sid} --follow to watch it, ltray stop {sid} to stop it",
            err=True,
        )
        raise typer.Exit(130) from None
    status = status_of(info)
    if status == "SUCCEEDED":
        typer.echo(f"[ltray] job {sid} succeeded")
        return
    message = " ".join((info.message or "").split())
    typer.echo(f"error: job {sid} {status.lower()}: {message}".rstrip(": "), err=True)
    raise typer.Exit(1)


def submit(
    job_file: Annotated[
        Path, typer.Argument(help="job or sweep YAML, e.g. jobs/inat18.yaml, jobs/sweeps/tiny.yaml")
    ],
    address: Address = None,
    overrides: Overrides = None,
    follow: Follow = False,
    resubmit: Annotated[
        bool,
        typer.Option(
            "--resubmit", help="run a failed or stopped job again, resuming from its checkpoint"
        ),
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Submit a job (ltray train) or a sweep (ltray tune) to a Ray cluster, once.

    The submission id is derived from the job's name and hash: submitting a job that runs or
    finished is refused; --resubmit continues a failed or stopped one.
    """
    from ltray.cluster import submission as sub
    from ltray.cluster.connection import connect

    with exit_on_error():
        submission = sub.load_submission(job_file, overrides or [])
        sub.check_no_credentials_travel(submission)
        notes = sub.check_paths_reach_the_cluster(submission.job, str(job_file))
        sub.check_upload(submission)
    with exit_on_error(), _quiet(verbose):
        cluster = connect(address)
        done = sub.submit(submission, cluster, resubmit=resubmit, on_upload=typer.echo)
    for note in notes:
        typer.echo(f"[ltray] note: {note}")
    typer.echo(
        f"[ltray] submitted {done.submission_id} to {cluster.shown}: {submission.entrypoint()}"
    )
    if not follow:
        typer.echo(
            f"follow it with: ltray logs {done.submission_id} --follow --address {cluster.shown}"
        )
        return
    with exit_on_error(), _quiet(verbose):
        _follow_to_the_end(cluster, done.submission_id)


def jobs(address: Address = None) -> None:
    """List the cluster's jobs, newest first."""
    from ltray.cluster.connection import connect
    from ltray.cluster.submission import list_rows

    with exit_on_error():
        cluster = connect(address)
        rows = list_rows(cluster)
    if not rows:
        typer.echo(f"no jobs on {cluster.shown}")
        return
    columns = ["id", "status", "started", "job", "entrypoint"]
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns[:-1]}
    typer.echo("  ".join(c.upper().ljust(widths.get(c, 0)) for c in columns).rstrip())
    for row in rows:
        typer.echo("  ".join(row[c].ljust(widths.get(c, 0)) for c in columns).rstrip())


def stop(job: JobRef, address: Address = None, overrides: Overrides = None) -> None:
    """Stop a job: its driver, and Ray Train's controller and workers with it."""
    from ltray.cluster import submission as sub
    from ltray.cluster.connection import connect

    with exit_on_error():
        cluster = connect(address)
        sid = sub.resolve_id(cluster, job, overrides)
        info, alive = sub.stop(cluster, sid)
    status = sub.status_of(info)
    if alive:
        typer.echo(
            f"error: job {sid} is {status.lower()}, but {len(alive)} of its actors live on: "
            f"{', '.join(alive)}",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"[ltray] job {sid} {status.lower()}; none of its workers live on")


def logs(
    job: JobRef,
    address: Address = None,
    overrides: Overrides = None,
    follow: Follow = False,
    verbose: Verbose = False,
) -> None:
    """Print a job's log (its driver's output: ltray's progress lines)."""
    from ltray.cluster import submission as sub
    from ltray.cluster.connection import connect

    with exit_on_error(), _quiet(verbose):
        cluster = connect(address)
        sid = sub.resolve_id(cluster, job, overrides)
        if follow:
            _follow_to_the_end(cluster, sid)
            return
        sub.job_info(cluster, sid)
        _write(cluster.client.get_job_logs(sid))
