"""``ltray train``: check everything that can fail early, then run the loop on Ray or locally.

This is the only module that imports Ray (the loop's ``RaySession`` aside), so ``--local``
works on machines without it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.config import JobConfig, ScalingConfig
from ltray.data import Manifest, read_manifest
from ltray.errors import LtrayError
from ltray.logs import link_ray_logs, ray_init_options
from ltray.losses import head_for
from ltray.secrets import redact_url, scrub, split_secrets
from ltray.tracking import (
    MlflowTracker,
    check_reachable,
    create_sqlite_folder,
    resolve_tracking_uri,
)
from ltray.train.device import wants_gpu
from ltray.train.divergence import FAILURE_FILE
from ltray.train.finished_run import answer_finished, final_state
from ltray.train.run_identity import (
    IDENTITY_TAG,
    RunIdentity,
    claim_checkpoint_folder,
    has_checkpoints,
    identity_of,
    refuse_if_different,
    resolve_job,
)
from ltray.train.storage import Storage


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


def preflight(job: JobConfig, local: bool = False) -> Manifest:
    """Fail before any worker starts: unreadable data set, unwritable storage, unreachable
    tracking server, a split too small for the workers. Each error names the culprit."""
    head_for(job.loss, job.model)
    manifest = read_manifest(job.data.url, storage_options=job.data.storage_options)
    split = job.data.train_split
    if manifest.has_split(split):
        workers = 1 if local else job.scaling.num_workers
        manifest.check_train_shares(split, workers)
    check_selection_has_a_val_split(job, manifest)
    Storage(job.storage.url, job.storage.storage_options).check_writable()
    if job.tracking.enabled:
        create_sqlite_folder(job.tracking.uri)
        check_reachable(job.tracking.uri)
    return manifest


def check_selection_has_a_val_split(job: JobConfig, manifest: Manifest) -> None:
    """What selects a value (tau_norm's tau) reads the val split; refuse, before training, a
    job that would have to select without one (``schedule.select_by`` is refused by the
    trainer's set-up, also before the first step)."""
    has_val = manifest.has_split(job.data.val_split or "val")
    if job.loss.name == "tau_norm" and job.loss.decoupled.tau is None and not has_val:
        raise LtrayError(
            f"tau_norm chooses tau on the validation split, and data set "
            f"{redact_url(job.data.url)} has none: prepare one with --val-per-class N, or give "
            "loss.decoupled.tau"
        )


@dataclass(frozen=True)
class RunResult:
    run_name: str
    metrics: dict[str, float]
    mlflow_run_id: str | None = None


def run_job(job: JobConfig, *, local: bool = False, fresh: bool = False) -> RunResult:
    """Train one job to the end (resuming its last checkpoint unless ``fresh``).

    Everything that can be checked before a worker starts is: the inputs (:func:`preflight`),
    whether the cluster can ever hold the workers, and whether the run's checkpoint folder and
    MLflow run belong to this very training (:mod:`ltray.train.run_identity`). A run that
    fails or is interrupted before its first checkpoint leaves no run folder behind.
    """
    job = absolutize(job)
    manifest = preflight(job, local)
    if local:
        use_gpu, world_size = wants_gpu(job.scaling), 1
    else:
        ray_init()
        use_gpu, world_size = use_gpu_on_cluster(job), job.scaling.num_workers
    job = resolve_job(job, world_size=world_size, use_gpu=use_gpu, num_classes=manifest.num_classes)
    identity = identity_of(job)
    run_name = identity.run_name
    storage = Storage(job.storage.url, job.storage.storage_options)
    if not fresh:
        _refuse_another_trainings_mlflow_run(job, identity)
        state = final_state(storage, identity, local)
        if state is not None:  # nothing to train: no worker starts
            return RunResult(
                run_name, state["final"], answer_finished(job, run_name, state, manifest)
            )
    if not local:
        check_cluster_fits(job.scaling, use_gpu)
    if fresh and storage.exists(run_name):
        storage.remove(run_name)
    claim_checkpoint_folder(storage, identity)
    public, secrets = split_secrets(job.model_dump(mode="json"))
    config: dict[str, Any] = {
        "job": public,
        "secrets": secrets,
        "run_name": run_name,
        "local": local,
        "fresh": fresh,
    }
    try:
        if local:
            train_loop(config)
            metrics = config["result"]
        else:
            metrics = run_on_ray(job, config, storage)
    except BaseException:
        _remove_if_unstarted(storage, run_name)
        raise
    return RunResult(run_name, metrics, _mlflow_run_id(job, run_name))


def train_loop(config: dict[str, Any]) -> None:
    """:func:`ltray.train.trainer.train_loop_per_worker`, imported where it runs: Ray pickles
    this function by name, so the driver (``ltray train``'s, a sweep trial's) never imports the
    loop's modules. torchvision among them costs seconds of CPU a process (it pulls in
    torch._dynamo)."""
    from ltray.train.trainer import train_loop_per_worker

    train_loop_per_worker(config)


def _refuse_another_trainings_mlflow_run(job: JobConfig, identity: RunIdentity) -> None:
    if not job.tracking.enabled:
        return
    tracker = MlflowTracker(job.tracking.uri, job.tracking.experiment)
    found = tracker.recorded_identity(identity.run_name, IDENTITY_TAG)
    if found is not None:
        run_id, recorded = found
        refuse_if_different(identity, recorded, f"MLflow run {run_id}")


def _mlflow_run_id(job: JobConfig, run_name: str) -> str | None:
    if not job.tracking.enabled:
        return None
    found = MlflowTracker(job.tracking.uri, job.tracking.experiment).recorded_identity(
        run_name, IDENTITY_TAG
    )
    return found[0] if found else None


def _remove_if_unstarted(storage: Storage, run_name: str) -> None:
    """After a failure or Ctrl-C: a run folder without a single checkpoint holds nothing worth
    keeping (Ray's start-up files, the identity record), so it goes."""
    try:
        if not has_checkpoints(storage, run_name):
            storage.remove(run_name)
    except LtrayError:
        pass  # storage unreachable: the original error is the one to report


def worker_capacity(
    scaling: ScalingConfig, use_gpu: bool, nodes: list[dict[str, float]] | None = None
) -> int:
    """How many workers of ``scaling`` the live cluster (or ``nodes``, each node's resources)
    holds at once: each needs ``cpus_per_worker`` CPUs, and a GPU when ``use_gpu``, on one node;
    the placement strategy decides how workers may share nodes."""

    room = []
    for resources in _alive_nodes() if nodes is None else nodes:
        fits = int(resources.get("CPU", 0) // scaling.cpus_per_worker)
        if use_gpu:
            fits = min(fits, int(resources.get("GPU", 0)))
        room.append(fits)
    strategy = scaling.placement_strategy
    if strategy == "STRICT_SPREAD":
        return sum(1 for fits in room if fits > 0)
    if strategy == "STRICT_PACK":
        return max(room, default=0)
    return sum(room)


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]


def check_cluster_fits(
    scaling: ScalingConfig, use_gpu: bool, nodes: list[dict[str, float]] | None = None
) -> None:
    """Refuse, in seconds, a job the cluster (or ``nodes``) can never hold (Ray would wait for
    the workers and then time out)."""
    nodes = _alive_nodes() if nodes is None else nodes
    capacity = worker_capacity(scaling, use_gpu, nodes)
    if capacity >= scaling.num_workers:
        return
    cpus = sum(resources.get("CPU", 0) for resources in nodes)
    gpus = sum(resources.get("GPU", 0) for resources in nodes)
    each = f"{scaling.cpus_per_worker:g} CPU" + (" + 1 GPU" if use_gpu else "")
    advice = "lower scaling.num_workers or scaling.cpus_per_worker"
    if use_gpu and gpus < scaling.num_workers:
        advice = "add GPU nodes, lower scaling.num_workers, or set scaling.use_gpu=auto"
    raise LtrayError(
        f"scaling asks for {scaling.num_workers} workers of {each} each "
        f"({scaling.placement_strategy}); the cluster has {cpus:g} CPUs and {gpus:g} GPUs on "
        f"{len(nodes)} node(s), room for {capacity}: {advice}"
    )


RAY_WORKING_DIRS = f"{os.sep}runtime_resources{os.sep}working_dir_files{os.sep}"


@contextlib.contextmanager
def steady_cwd() -> Iterator[None]:
    """Run a Ray fit from a folder that stays. In a job submitted with a working_dir, the driver
    runs in Ray's unpacked copy of it, and Ray replaces that copy (deletes and unpacks it again)
    when the job's new workers set it up: the driver's current folder is gone, and Ray Tune's
    end-of-fit bookkeeping (relative paths, so os.getcwd) fails with FileNotFoundError (Ray
    issue 52343). The same path holds the fresh copy afterwards: it is the current folder again
    on the way out. Elsewhere nothing changes."""
    try:
        here = os.getcwd()
    except FileNotFoundError:
        here = os.environ.get("PWD", "")
    if RAY_WORKING_DIRS not in here + os.sep:
        yield
        return
    os.chdir(tempfile.gettempdir())
    try:
        yield
    finally:
        os.chdir(here)


def ray_init() -> None:
    """Join the cluster at RAY_ADDRESS, or start a local Ray; Ray's logs are linked from
    ltray's log folder."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    options = ray_init_options()
    if address:
        context = ray.init(address=address, **options)
    else:
        # "local", not None: without RAY_ADDRESS we start our own Ray, never silently join a
        # cluster that `ray start` left running on this machine. With its dashboard (on
        # 127.0.0.1): Ray Train's placement-group cleaner asks its state API whether a run's
        # controller still lives, and without it waits forever
        context = ray.init(address="local", include_dashboard=True, **options)
    session_dir = (getattr(context, "address_info", None) or {}).get("session_dir")
    if session_dir:
        link_ray_logs(os.path.join(session_dir, "logs"))


def use_gpu_on_cluster(job: JobConfig) -> bool:
    import ray

    if job.scaling.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(job.scaling.use_gpu)


def run_on_ray(
    job: JobConfig,
    config: dict[str, Any],
    storage: Storage,
    callbacks: list[Any] | None = None,
    console: bool = True,
) -> dict[str, float]:
    """One ``TorchTrainer`` run of the loop: ``ltray train``'s, and each sweep trial's (whose
    driver adds Tune's report callback and has no console of its own to relay rank 0's lines
    to). Returns the run's final metrics."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from ltray.train.session import PLACEMENT_GROUP_KEY, ConsoleRelay, failure_notice

    ray_init()
    # the secrets reach the workers through the object store: Ray records train_loop_config
    # in its run state (and, with the export API on, in the session's log folder)
    config = {**config, "secrets": ray.put(config["secrets"])}
    use_gpu = use_gpu_on_cluster(job)
    scaling = job.scaling
    storage_path, filesystem = storage.pyarrow_filesystem()
    relay = ConsoleRelay() if console else contextlib.nullcontext()
    callbacks = list(callbacks or [])
    if console:  # rank 0's progress lines, printed here as they come
        config["console"] = relay.queue
        callbacks.append(failure_notice(relay.queue, scaling.max_failures))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
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
            callbacks=callbacks,
        ),
    )
    failure = f"{config['run_name']}/{FAILURE_FILE}"
    if storage.exists(failure):
        storage.remove(failure)  # left by an earlier attempt of this job
    try:
        with relay, steady_cwd():
            result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        cause = scrub(_root_cause(exc), job.model_dump())
        raise LtrayError(f"training run {config['run_name']} failed: {cause}") from None
    if storage.exists(failure):
        raise LtrayError(scrub(storage.read_bytes(failure).decode(), job.model_dump()))
    metrics = dict(result.metrics or {})
    metrics.pop(PLACEMENT_GROUP_KEY, None)
    return metrics


def _root_cause(exc: BaseException) -> str:
    """The innermost error's message, its last line (a worker's error arrives as its
    traceback); for a database error, its first (SQLAlchemy follows the message with the
    statement, its parameters and a link): what the user needs to read."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    if any(line.startswith("[SQL: ") for line in text):
        return text[0]
    return text[-1] if text else type(exc).__name__
