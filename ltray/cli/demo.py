"""``ltray demo``: the whole path on a small generated data set, with nothing to download.

Prepares the synthetic long-tailed set named by the demo job (when it is not there yet), trains
the job on a local Ray (or in-process with ``--local``), and says where to look at the run. The
demo job ships inside the package (``ltray/jobs/demo.yaml``; ``jobs/demo.yaml`` in a checkout
links to it), so ``ltray demo`` works from any folder; its relative paths are relative to the
folder it runs in.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from ltray.cli.console import Verbose, exit_on_error, quiet_unless
from ltray.cli.train import where_to_look
from ltray.config import JobConfig, load_job
from ltray.data import read_manifest
from ltray.data.prepare import prepare, sources
from ltray.errors import LtrayError
from ltray.secrets import redact_url
from ltray.train.launcher import run_job


def demo(
    job: Annotated[
        Path | None, typer.Option(help="a job file to run instead of the packaged demo job")
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="train without Ray")] = False,
    verbose: Verbose = False,
) -> None:
    """The whole path on a small generated data set: prepare, train, and where to look."""
    with exit_on_error():
        demo_job = load_demo_job(job)
        with quiet_unless(verbose):
            run_demo(demo_job, local=local)


def load_demo_job(job_file: Path | None = None) -> JobConfig:
    """The given job file, or the demo job packaged with ltray."""
    if job_file is not None:
        return load_job(job_file)
    with resources.as_file(resources.files("ltray.jobs") / "demo.yaml") as packaged:
        return load_job(packaged)


def _has_data_set(url: str) -> bool:
    try:
        read_manifest(url)
    except LtrayError:
        return False
    return True


def run_demo(job: JobConfig, *, local: bool = False) -> None:
    if not _has_data_set(job.data.url):
        print(f"[ltray] preparing a generated long-tailed data set at {redact_url(job.data.url)}")
        result = prepare(sources.synthetic(image_size=job.data.image_size), job.data.url)
        counts = result.manifest.class_counts("train")
        groups = result.manifest.groups()
        shown = ", ".join(f"{groups.count(g)} {g}" for g in ("many", "medium", "few"))
        print(f"[ltray] {len(counts)} classes ({shown}), train counts {counts}")
    result = run_job(job, local=local)
    accuracy = {k: round(v, 2) for k, v in result.metrics.items() if k.startswith("test/acc")}
    accuracy = {k: v for k, v in accuracy.items() if "/acc_class/" not in k}
    print(f"[ltray] run {result.run_name}: {accuracy}")
    for line in where_to_look(job, result.mlflow_run_id):
        print(f"[ltray] {line}" if not line.startswith(" ") else line)
