"""Seconds to answer a finished run given again: on the driver, beside the loop on Ray.

    python bench/bench_rerun.py                 # 2 CPU workers, 3 answers each way

Trains the demo job cut small (ResNet-32, cross-entropy, 2 Ray Train workers, one epoch of 2
steps, on a generated set of 4 classes, MLflow in a SQLite file) to the end on a local Ray, then
times what giving it again costs, each way --repeats times on the same Ray:
- ``ltray train``'s answer (``ltray.train.launcher.run_job``): the final checkpoint read on the
  driver, the MLflow run healed there, no worker started;
- the loop's answer, what ``ltray train`` did before 2026-11-29 (``run_on_ray`` with the same
  config): one ``TorchTrainer`` whose workers restore the final checkpoint and report it.

Both return the same final metrics (checked). Prints each way's seconds and, last, the ratio of
the medians (driver / loop). Without Ray installed it says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_benchmarks import ltray_prepare, skipped_without_ray  # noqa: E402

JOB = Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml"


def small_job(data: str, folder: Path):
    """The demo job (``jobs/demo.yaml``) cut to one epoch of 2 steps on ``data``."""
    from ltray.config import load_job

    overrides = {
        "name": "bench-rerun",
        "data.url": data,
        "data.loader_workers": 0,
        "loss.name": "ce",
        "schedule.epochs": 1,
        "schedule.warmup_epochs": 0,
        "schedule.max_steps_per_epoch": 2,
        "schedule.max_eval_batches": 1,
        "scaling.num_workers": 2,
        "storage.url": str(folder / "runs"),
        "tracking.uri": f"sqlite:///{folder}/mlflow.db",
        "tracking.log_model": "false",
    }
    return load_job(JOB, [f"{key}={value}" for key, value in overrides.items()])


def loop_answer(job) -> dict[str, float]:
    """The finished run given to the loop on Ray, with the config ``run_job`` builds."""
    from ltray.data import read_manifest
    from ltray.secrets import split_secrets
    from ltray.train.launcher import absolutize, run_on_ray, use_gpu_on_cluster
    from ltray.train.run_identity import resolve_job
    from ltray.train.storage import Storage

    job = absolutize(job)
    classes = read_manifest(job.data.url).num_classes
    workers, use_gpu = job.scaling.num_workers, use_gpu_on_cluster(job)
    job = resolve_job(job, world_size=workers, use_gpu=use_gpu, num_classes=classes)
    public, secrets = split_secrets(job.model_dump(mode="json"))
    config = {
        "job": public,
        "secrets": secrets,
        "run_name": job.run_name(),
        "local": False,
        "fresh": False,
    }
    return run_on_ray(job, config, Storage(job.storage.url))


def timed(answer) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    metrics = answer()
    return time.perf_counter() - start, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="answers timed each way")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ltray-bench"))
    args = parser.parse_args(argv)
    if skipped_without_ray("bench_rerun"):
        return
    import ray

    from ltray.cli.console import quiet_unless
    from ltray.train.launcher import run_job

    data = args.cache / "rerun-synthetic-4"
    if not (data / "manifest.json").exists():
        args.cache.mkdir(parents=True, exist_ok=True)
        shape = ["--classes", "4", "--imbalance", "6", "--image-size", "32", "--n-max", "48"]
        ltray_prepare(["synthetic", str(data), *shape, "--test-per-class", "8", "--seed", "1"])
    seconds: dict[str, list[float]] = {"driver": [], "loop": []}
    with tempfile.TemporaryDirectory(prefix="ltray-bench-rerun-") as folder:
        job = small_job(str(data), Path(folder))
        with quiet_unless(False):
            final = run_job(job).metrics
            print("bench-rerun: trained to the end (2 Ray workers)", flush=True)
            for _ in range(args.repeats):
                for way, answer in (
                    ("driver", lambda: run_job(job).metrics),
                    ("loop", lambda: loop_answer(job)),
                ):
                    took, metrics = timed(answer)
                    if metrics != final:
                        raise SystemExit(f"bench_rerun: the {way} answered {metrics}, not {final}")
                    seconds[way].append(took)
                    print(f"  {way}: {took:.2f} s", flush=True)
        ray.shutdown()
    driver, loop = (statistics.median(seconds[way]) for way in ("driver", "loop"))
    print(f"median: driver {driver:.2f} s, loop on Ray {loop:.2f} s")
    print(f"ratio driver/loop = {driver / loop:.3f}")


if __name__ == "__main__":
    main()
