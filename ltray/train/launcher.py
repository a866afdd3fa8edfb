"""``ltray train``: check everything that can fail early, then run the loop on Ray or locally.

This is the only module that imports Ray (the loop's ``RaySession`` aside), so ``--local``
works on machines without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.config import JobConfig
from ltray.data import read_manifest
from ltray.errors import LtrayError
from ltray.logs import link_ray_logs, ray_init_options
from ltray.losses import head_for
from ltray.secrets import scrub, split_secrets
from ltray.tracking import check_reachable, create_sqlite_folder, resolve_tracking_uri
from ltray.train.storage import Storage
from ltray.train.trainer import FAILURE_FILE, check_train_shares, train_loop_per_worker


def _is_local_path(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def absolutize(job: JobConfig) -> JobConfig:
    """Relative paths are relative to where the user typed the command, not to a Ray worker's
    working folder: make them absolute before the job leaves this process."""
    update: dict[str, Any] = {}
    if _is_local_path(job.data.url) and "://" not in job.data.url:
        update["data"] = job.data.model_copy(update={"url": str(Path(job.data.url).resolve())})
    if _is_local_path(job.storage.url) and "://" not in job.storage.url:
        update["storage"] = job.storage.model_copy(
            update={"url": str(Path(job.storage.url).resolve())}
        )
    uri = resolve_tracking_uri(job.tracking.uri)
    artifacts = job.tracking.artifact_location
    if artifacts and "://" not in artifacts:
        artifacts = str(Path(artifacts).resolve())
    update["tracking"] = job.tracking.model_copy(
        update={"uri": uri, "artifact_location": artifacts}
    )
    return job.model_copy(update=update)


def preflight(job: JobConfig, local: bool = False) -> None:
    """Fail before any worker starts: unreadable data set, unwritable storage, unreachable
    tracking server, a split too small for the workers. Each error names the culprit."""
    head_for(job.loss, job.model)
    manifest = read_manifest(job.data.url, storage_options=job.data.storage_options)
    split = job.data.train_split
    if manifest.has_split(split):
        workers = 1 if local else job.scaling.num_workers
        check_train_shares(sum(manifest.class_counts(split)), workers, split)
    Storage(job.storage.url, job.storage.storage_options).check_writable()
    if job.tracking.enabled:
        create_sqlite_folder(job.tracking.uri)
        check_reachable(job.tracking.uri)


@dataclass(frozen=True)
class RunResult:
    run_name: str
    metrics: dict[str, float]


def run_job(job: JobConfig, *, local: bool = False, fresh: bool = False) -> RunResult:
    """Train one job to the end (resuming its last checkpoint unless ``fresh``)."""
    job = absolutize(job)
    preflight(job, local)
    run_name = job.run_name()
    storage = Storage(job.storage.url, job.storage.storage_options)
    if fresh and storage.exists(run_name):
        storage.remove(run_name)
    public, secrets = split_secrets(job.model_dump(mode="json"))
    config: dict[str, Any] = {
        "job": public,
        "secrets": secrets,
        "run_name": run_name,
        "local": local,
        "fresh": fresh,
    }
    if local:
        train_loop_per_worker(config)
        return RunResult(run_name, config["result"])
    return RunResult(run_name, _run_on_ray(job, config, storage))


def _ray_init() -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    options = ray_init_options()
    if address:
        context = ray.init(address=address, **options)
    else:
        # "local", not None: without RAY_ADDRESS we start our own Ray, never silently join a
        # cluster that `ray start` left running on this machine
        context = ray.init(address="local", include_dashboard=False, **options)
    session_dir = (getattr(context, "address_info", None) or {}).get("session_dir")
    if session_dir:
        link_ray_logs(os.path.join(session_dir, "logs"))


def _use_gpu(job: JobConfig) -> bool:
    import ray

    if job.scaling.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(job.scaling.use_gpu)


def _run_on_ray(job: JobConfig, config: dict[str, Any], storage: Storage) -> dict[str, float]:
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from ltray.train.session import ConsoleRelay, failure_notice

    _ray_init()
    # the secrets reach the workers through the object store: Ray records train_loop_config
    # in its run state (and, with the export API on, in the session's log folder)
    config = {**config, "secrets": ray.put(config["secrets"])}
    use_gpu = _use_gpu(job)
    scaling = job.scaling
    storage_path, filesystem = storage.pyarrow_filesystem()
    relay = ConsoleRelay()  # rank 0's progress lines, printed here as they come
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**config, "console": relay.queue},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=config["run_name"],
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.storage.keep),
            callbacks=[failure_notice(relay.queue, scaling.max_failures)],
        ),
    )
    failure = f"{config['run_name']}/{FAILURE_FILE}"
    if storage.exists(failure):
        storage.remove(failure)  # left by an earlier attempt of this job
    try:
        with relay:
            result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        cause = scrub(_root_cause(exc), job.model_dump())
        raise LtrayError(f"training run {config['run_name']} failed: {cause}") from None
    if storage.exists(failure):
        raise LtrayError(scrub(storage.read_bytes(failure).decode(), job.model_dump()))
    return dict(result.metrics or {})


def _root_cause(exc: BaseException) -> str:
    """The innermost error's message, first line: what the user needs to read."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
