"""``ltray demo``: the whole path on a small generated data set, with nothing to download.

Prepares the synthetic long-tailed set named by the demo job, with a val split (when it is not
there yet), trains the job on a local Ray (or in-process with ``--local``), runs the tiny sweep
over the seed paper's three knobs (``ltray/jobs/demo_sweep.yaml``, on Ray only) and prints its
leaderboard, and says where to look. A second run reuses what is done: the data set, the
finished run, the finished sweep. The demo job ships inside the package
(``ltray/jobs/demo.yaml``; ``jobs/demo.yaml`` in a checkout links to it), so ``ltray demo``
works from any folder; its relative paths are relative to the folder it runs in.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from ltray.cli.console import Verbose, exit_on_error, quiet_unless
from ltray.cli.train import where_to_look
from ltray.config import JobConfig, read_job_yaml, validate_job
from ltray.data import read_manifest
from ltray.data.prepare import prepare, sources
from ltray.errors import LtrayError
from ltray.secrets import redact_url
from ltray.train.launcher import run_job
from ltray.tune.sweep_config import Sweep, build_sweep

VAL_PER_CLASS = 20  # the generated set's balanced val split, what the demo sweep selects on


def demo(
    job: Annotated[
        Path | None, typer.Option(help="a job file to run instead of the packaged demo job")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="train without Ray (and so without the sweep)")
    ] = False,
    sweep: Annotated[
        bool, typer.Option("--sweep/--no-sweep", help="run the tiny sweep after training")
    ] = True,
    verbose: Verbose = False,
) -> None:
    """The whole path on a small generated data set: prepare, train, sweep, where to look."""
    with exit_on_error():
        raw = demo_job_mapping(job)
        demo_job = validate_job(raw, source=str(job or "the packaged demo job"))
        with quiet_unless(verbose):
            run_demo(demo_job, local=local)
            if sweep and not local:
                run_demo_sweep(demo_job_sweep(raw), demo_job)
            elif sweep:
                print("[ltray] the sweep runs on Ray: skipped with --local")


def demo_job_mapping(job_file: Path | None = None) -> dict[str, Any]:
    """The given job file, or the demo job packaged with ltray, as the mapping it holds."""
    if job_file is not None:
        return read_job_yaml(job_file)
    return yaml.safe_load((resources.files("ltray.jobs") / "demo.yaml").read_text())


def load_demo_job(job_file: Path | None = None) -> JobConfig:
    """The given job file, or the demo job packaged with ltray."""
    return validate_job(demo_job_mapping(job_file), source=str(job_file or "demo job"))


def demo_job_sweep(job_raw: dict[str, Any]) -> Sweep:
    """The packaged tiny sweep, over the demo job."""
    raw = yaml.safe_load((resources.files("ltray.jobs") / "demo_sweep.yaml").read_text())
    raw["base"] = job_raw
    return build_sweep(raw, "the demo sweep")


def run_demo_sweep(sweep: Sweep, job: JobConfig) -> None:
    from ltray.tune import leaderboard
    from ltray.tune.sweep import run_sweep

    if not read_manifest(job.data.url).has_split(job.data.val_split or "val"):
        shown = redact_url(job.data.url)
        print(f"[ltray] the sweep selects on a val split, and {shown} has none: skipped")
        return
    folder = Path(job.storage.url).parent if "://" not in job.storage.url else Path(".")
    best_out = folder / f"{sweep.name}-best.yaml"
    outcome = run_sweep(sweep, best_out=best_out)
    if not outcome.complete:  # Ctrl-C: Tune saved the sweep's state, a second run resumes it
        raise KeyboardInterrupt
    print(f"[ltray] sweep {outcome.run_name}:")
    print(leaderboard.table(sweep, outcome.rows))
    if outcome.best is not None:
        print(f"[ltray] the best trial's job: {best_out} (ltray train {best_out})")


def _has_data_set(url: str) -> bool:
    try:
        read_manifest(url)
    except LtrayError:
        return False
    return True


def run_demo(job: JobConfig, *, local: bool = False) -> None:
    if not _has_data_set(job.data.url):
        print(f"[ltray] preparing a generated long-tailed data set at {redact_url(job.data.url)}")
        plan = sources.synthetic(image_size=job.data.image_size, val_per_class=VAL_PER_CLASS)
        result = prepare(plan, job.data.url)
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
