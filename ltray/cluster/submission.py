"""``ltray submit``: a job or sweep file handed to a Ray cluster's job API, once.

The submission id is derived from the job's name and hash as the file and its ``--set`` lines
give them (``ltray-NAME-HASH``; ``-2``, ``-3``, ... for resubmissions; the same name a sweep
has, and the MLflow run name of a job whose ``model.num_classes`` and ``scaling.precision`` are
given: the run name adds what only the cluster knows), and each attempt carries it in its
metadata, so a second submit of a job that runs or finished is refused instead of starting a
duplicate, and ``--resubmit`` continues a failed or stopped one: the entrypoint is the same
``ltray train JOB``, which resumes from the run's last checkpoint.

Everything that can be checked here is checked before anything is uploaded: the file validates,
it holds no credential (Ray stores the entrypoint and runtime environment with the job, shows them
on its dashboard, and keeps the uploaded files), its paths mean something on the cluster, the
upload fits Ray's limit, and the cluster has the workers and GPUs the job asks for.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NoReturn

from ltray.cluster.connection import Cluster
from ltray.cluster.runtime_env import (
    check_upload_size,
    runtime_env,
    upload_files,
)
from ltray.config import (
    JobConfig,
    SubmitConfig,
    load_job,
    parse_override,
    read_job_yaml,
)
from ltray.errors import LtrayError
from ltray.secrets import is_secret_key, redact_url, split_secrets

JOB_KEY = "ltray.job"
ID_PREFIX = "ltray-"
ACTIVE = ("PENDING", "RUNNING")
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
STOP_WAIT_S = 60.0
AGENT_WAIT_S = 60.0


@dataclass
class Submission:
    """What ``ltray submit FILE`` hands to the cluster."""

    path: Path
    kind: Literal["train", "tune"]
    key: str  # NAME-HASH of the job (or sweep) as submitted
    overrides: list[str]
    submit: SubmitConfig
    job: JobConfig  # the job, or a sweep's base job (with its trials' scaling)
    config_files: list[Path] = field(default_factory=list)  # files the entrypoint reads

    @property
    def working_dir(self) -> Path | None:
        folder = self.submit.runtime_env.working_dir
        return None if folder is None else Path(folder).resolve()

    def entrypoint_path(self) -> str:
        """The file's path as the entrypoint names it: relative to the uploaded working_dir."""
        root = self.working_dir
        if root is None:
            return str(self.path)
        # abspath, not resolve: a symlinked job file keeps its name (Ray uploads its content)
        return Path(os.path.abspath(self.path)).relative_to(root).as_posix()

    def entrypoint(self) -> str:
        sets = [arg for text in self.overrides for arg in ("--set", text)]
        return shlex.join(["ltray", self.kind, self.entrypoint_path(), *sets])


def is_sweep_file(raw: Any) -> bool:
    return isinstance(raw, dict) and "space" in raw and "base" in raw


def load_submission(path: Path, overrides: list[str]) -> Submission:
    """Read and validate a job or sweep file with its ``--set`` overrides."""
    raw = read_job_yaml(path, what="job or sweep file")
    if is_sweep_file(raw):
        from ltray.tune.sweep_config import load_sweep

        sweep = load_sweep(path, overrides)
        files = [path]
        if isinstance(sweep.config.base, str):
            files.append(Path(sweep.config.base))
        return Submission(
            path=path,
            kind="tune",
            key=sweep.run_name,
            overrides=list(overrides),
            submit=sweep.config.submit or sweep.base.submit,
            job=sweep.base,
            config_files=files,
        )
    job = load_job(path, overrides)
    return Submission(
        path=path,
        kind="train",
        key=job.run_name(),
        overrides=list(overrides),
        submit=job.submit,
        job=job,
        config_files=[path],
    )


# ---- checks before anything is uploaded ---------------------------------------------------


def check_no_credentials_travel(submission: Submission) -> None:
    """Neither the uploaded files nor the entrypoint nor the runtime env may hold a credential."""
    for file in submission.config_files:
        _, found = split_secrets(read_job_yaml(file))
        for key_path, value in found:
            if value not in (None, "", {}, []):
                where = ".".join(str(part) for part in key_path)
                raise LtrayError(
                    f"{file}: {where} holds a credential, and the file would be uploaded to the "
                    "cluster and kept there; give the nodes their credentials through their "
                    "environment (AWS_ACCESS_KEY_ID ..., docker/.env, a Kubernetes secret)"
                )
    for text in submission.overrides:
        key_path, value = parse_override(text)
        if any(is_secret_key(part) for part in key_path) or redact_url(str(value)) != str(value):
            raise LtrayError(
                f"--set {'.'.join(key_path)}: a credential would be stored in the job's "
                "entrypoint and shown on Ray's dashboard; set it in the nodes' environment"
            )


def _local_relative(url: str) -> bool:
    return "://" not in url and not Path(url).is_absolute()


def check_paths_reach_the_cluster(job: JobConfig, source: str) -> list[str]:
    """Relative paths would point into the job's temporary copy of the working_dir on one node,
    and memory:// into one process: refused. Absolute local paths must be on a mount every node
    shares: returned as notes."""
    notes = []
    places = [("data.url", job.data.url), ("storage.url", job.storage.url)]
    uri = job.tracking.uri
    if "uri" not in job.tracking.model_fields_set:
        notes.append(
            "tracking.uri is not in the job: it logs to the cluster's $MLFLOW_TRACKING_URI (a "
            "SQLite file in its temporary folder where that is unset)"
        )
    elif uri.startswith("sqlite:///"):
        places.append(("tracking.uri", uri.removeprefix("sqlite:///")))
    if job.tracking.artifact_location:
        places.append(("tracking.artifact_location", job.tracking.artifact_location))
    for key, url in places:
        if url.startswith("memory://"):
            raise LtrayError(f"{source}: {key} {url}: memory:// lives in one process only")
        if _local_relative(url):
            instead = "an MLflow server (http://HOST:5000)" if key == "tracking.uri" else "s3://..."
            raise LtrayError(
                f"{source}: {key} {redact_url(url)} is a relative path: on the cluster it would "
                "point into the job's temporary copy of the working_dir, on one node; give "
                f"{instead} or an absolute path on a shared mount"
            )
        if "://" not in url or url.startswith("file://"):
            notes.append(f"{key} {redact_url(url)} is a path on the nodes: every node must see it")
    return notes


def check_upload(submission: Submission) -> None:
    """The file (and a sweep's base file) lie in the working_dir and are uploaded; the upload
    fits Ray's limit."""
    root = submission.working_dir
    if root is None:
        return
    if not root.is_dir():
        raise LtrayError(
            f"{submission.path}: submit.runtime_env.working_dir {root} is not a folder"
        )
    upload = upload_files(root, submission.submit.runtime_env.excludes)
    for file in submission.config_files:
        try:
            relative = Path(os.path.abspath(file)).relative_to(root).as_posix()
        except ValueError:
            raise LtrayError(
                f"{file} is outside the working_dir {root}, so the cluster would not have it: "
                "run ltray submit from a folder that holds it, or set "
                "submit.runtime_env.working_dir"
            ) from None
        if not upload.includes(relative):
            raise LtrayError(
                f"{file} is left out of the upload by submit.runtime_env.excludes, .gitignore or "
                ".rayignore, so the cluster would not have it"
            )
    check_upload_size(upload)


def check_resources(submission: Submission, cluster: Cluster) -> None:
    """Refuse a job the cluster can never hold (Ray would keep it pending forever)."""
    from ltray.train.launcher import check_cluster_fits

    nodes = cluster.alive_nodes()
    gpus = sum(node.get("GPU", 0) for node in nodes)
    scaling = submission.job.scaling
    use_gpu = gpus > 0 if scaling.use_gpu == "auto" else bool(scaling.use_gpu)
    try:
        check_cluster_fits(scaling, use_gpu, nodes)
    except LtrayError as exc:
        raise LtrayError(
            f"the cluster at {cluster.shown} cannot run {submission.path}: {exc}"
        ) from None
    wanted = submission.submit.entrypoint_num_gpus
    if wanted and not any(node.get("GPU", 0) >= wanted for node in nodes):
        raise LtrayError(
            f"{submission.path}: submit.entrypoint_num_gpus is {wanted:g}, and no node of the "
            f"cluster at {cluster.shown} has that many GPUs"
        )


# ---- attempts ------------------------------------------------------------------------------


def status_of(job: Any) -> str:
    return str(getattr(job.status, "value", job.status))


def attempts(cluster: Cluster, key: str) -> list[Any]:
    """This job's earlier submissions on the cluster, oldest first."""
    mine = [
        job
        for job in cluster.client.list_jobs()
        if (job.metadata or {}).get(JOB_KEY) == key
        and (job.submission_id or "").startswith(ID_PREFIX + key)
    ]
    return sorted(mine, key=lambda job: (job.start_time or 0, job.submission_id))


def submission_id(key: str, attempt: int) -> str:
    return f"{ID_PREFIX}{key}" + (f"-{attempt}" if attempt > 1 else "")


def _when(job: Any) -> str:
    if not job.start_time:
        return "not started"
    moment = datetime.fromtimestamp(job.start_time / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def refuse_duplicate(submission: Submission, earlier: list[Any], resubmit: bool, url: str) -> None:
    if not earlier:
        return
    last = earlier[-1]
    status, sid = status_of(last), last.submission_id
    what = f"{submission.path} (job {submission.key})"
    if status in ACTIVE:
        raise LtrayError(
            f"{what} is already {status.lower()} on {url} as {sid} (submitted {_when(last)}); "
            f"watch it with: ltray logs {sid} --follow; stop it with: ltray stop {sid}"
        )
    if status == "SUCCEEDED":
        raise LtrayError(
            f"{what} already finished on {url} as {sid} ({_when(last)}): nothing to submit; "
            "a changed job (--set ...) is a new run"
        )
    if not resubmit:
        raise LtrayError(
            f"{what} {status.lower()} on {url} as {sid}: pass --resubmit to run it again, "
            "resuming from its last checkpoint"
        )


@dataclass
class Submitted:
    submission_id: str
    attempt: int


def submit(
    submission: Submission,
    cluster: Cluster,
    *,
    resubmit: bool = False,
    on_upload: Callable[[str], None] = lambda line: None,
) -> Submitted:
    """Check the cluster, refuse a duplicate, then upload and submit."""
    check_resources(submission, cluster)
    earlier = attempts(cluster, submission.key)
    refuse_duplicate(submission, earlier, resubmit, cluster.shown)
    attempt = len(earlier) + 1
    sid = submission_id(submission.key, attempt)
    metadata = {
        **submission.submit.metadata,
        JOB_KEY: submission.key,
        "ltray.kind": submission.kind,
        "ltray.file": submission.entrypoint_path(),
        "ltray.attempt": str(attempt),
    }
    submit_cfg = submission.submit
    if submission.working_dir is not None:
        on_upload(f"[ltray] uploading {submission.working_dir} to {cluster.shown}")
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            cluster.client.submit_job(
                entrypoint=submission.entrypoint(),
                submission_id=sid,
                runtime_env=runtime_env(submit_cfg, submission.working_dir, submission_id=sid),
                metadata=metadata,
                entrypoint_num_cpus=submit_cfg.entrypoint_num_cpus or None,
                entrypoint_num_gpus=submit_cfg.entrypoint_num_gpus or None,
                entrypoint_memory=submit_cfg.entrypoint_memory or None,
                entrypoint_resources=submit_cfg.entrypoint_resources or None,
            )
            break
        except (RuntimeError, ValueError) as exc:
            # a head that has just started answers 500 "No available agent ... try again later"
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(2.0)
                continue
            _raise_refused(exc, sid, cluster)
    return Submitted(sid, attempt)


def _raise_refused(exc: Exception, sid: str, cluster: Cluster) -> NoReturn:
    text = str(exc)
    if "already" in text and sid in text:
        raise LtrayError(
            f"{sid} was submitted by someone else a moment ago: run ltray jobs to see it"
        ) from None
    raise LtrayError(f"the cluster at {cluster.shown} refused the job: {text}") from None


# ---- following, stopping, listing ------------------------------------------------------------


def resolve_id(cluster: Cluster, what: str, overrides: list[str] | None = None) -> str:
    """A submission id as given, or a job/sweep file's latest attempt."""
    path = Path(what)
    if what.endswith((".yaml", ".yml")) and path.is_file():
        key = load_submission(path, overrides or []).key
        earlier = attempts(cluster, key)
        if not earlier:
            raise LtrayError(f"{what} (job {key}) was never submitted to {cluster.shown}")
        return str(earlier[-1].submission_id)
    return what


def job_info(cluster: Cluster, sid: str) -> Any:
    try:
        return cluster.client.get_job_info(sid)
    except RuntimeError:
        raise LtrayError(
            f"no job {sid!r} on the cluster at {cluster.shown}: ltray jobs lists them"
        ) from None


def follow(cluster: Cluster, sid: str, write: Callable[[str], None]) -> Any:
    """Stream the job's log until it ends; returns its final info."""
    job_info(cluster, sid)

    async def tail() -> None:
        async for chunk in cluster.client.tail_job_logs(sid):
            write(chunk)

    asyncio.run(tail())
    for _ in range(50):  # the log closes a moment before the status is final
        info = job_info(cluster, sid)
        if status_of(info) in ENDED:
            return info
        time.sleep(0.2)
    return job_info(cluster, sid)


def stop(cluster: Cluster, sid: str, timeout_s: float = STOP_WAIT_S) -> tuple[Any, list[str]]:
    """Stop the job and wait until it has ended and its actors (Ray Train's controller and
    workers) are gone; returns its info and the actors still alive."""
    info = job_info(cluster, sid)
    if status_of(info) in ENDED:
        return info, []
    cluster.client.stop_job(sid)
    deadline = time.monotonic() + timeout_s
    while status_of(info) not in ENDED and time.monotonic() < deadline:
        time.sleep(0.5)
        info = job_info(cluster, sid)
    alive = _alive_actors(cluster, info.job_id)
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = _alive_actors(cluster, info.job_id)
    return info, alive


def _alive_actors(cluster: Cluster, job_id: str | None) -> list[str]:
    """The class names of the job's actors that are alive, but for detached ones: those are
    cluster-wide services that outlive every job by design (Ray Data's autoscaling
    coordinator, which Ray Train starts)."""
    if not job_id:
        return []
    actors = cluster.state("actors", [("job_id", "=", job_id), ("state", "=", "ALIVE")])
    return sorted(str(a.get("class_name")) for a in actors if not a.get("is_detached"))


def list_rows(cluster: Cluster) -> list[dict[str, str]]:
    """One row per job on the cluster, newest first."""
    rows = []
    jobs = sorted(cluster.client.list_jobs(), key=lambda job: -(job.start_time or 0))
    for job in jobs:
        metadata = job.metadata or {}
        rows.append(
            {
                "id": str(job.submission_id or job.job_id),
                "status": status_of(job),
                "started": _when(job),
                "job": metadata.get(JOB_KEY, "-"),
                "entrypoint": job.entrypoint,
            }
        )
    return rows
