"""``ltray demo``: the whole path on a small generated data set, with nothing to download.

Prepares the synthetic long-tailed set named by the demo job (when it is not there yet), trains
the job on a local Ray (or in-process with ``--local``), and says where to look at the run.
"""

from __future__ import annotations

from pathlib import Path

from ltray.config import load_job
from ltray.data import prepare, read_manifest, sources
from ltray.errors import LtrayError
from ltray.train.launcher import run_job


def _has_data_set(url: str) -> bool:
    try:
        read_manifest(url)
    except LtrayError:
        return False
    return True


def run_demo(job_file: Path, *, local: bool = False) -> None:
    if not job_file.is_file():
        raise LtrayError(
            f"demo job {job_file} not found: run `ltray demo` from the ltray checkout, "
            "or pass --job"
        )
    job = load_job(job_file)
    if not _has_data_set(job.data.url):
        print(f"[ltray] preparing a generated long-tailed data set at {job.data.url}")
        result = prepare(sources.synthetic(image_size=job.data.image_size), job.data.url)
        counts = result.manifest.class_counts("train")
        print(f"[ltray] {len(counts)} classes, train counts {counts}")
    result = run_job(job, local=local)
    accuracy = {k: round(v, 2) for k, v in result.metrics.items() if k.startswith("test/acc")}
    accuracy = {k: v for k, v in accuracy.items() if "/acc_class/" not in k}
    print(f"[ltray] run {result.run_name}: {accuracy}")
    if job.tracking.enabled:
        print("[ltray] look at it in the MLflow UI:")
        print(f"    mlflow ui --backend-store-uri {job.tracking.uri}")
