"""What makes two runs the same run: the resolved job and how it is executed.

A job file leaves some choices to the machine: ``scaling.use_gpu: auto``, ``precision: auto``,
``model.num_classes`` (from the data set), and ``--local`` trains one worker whatever
``scaling.num_workers`` says. :func:`resolve_job` makes them concrete before the run is named,
so the run name (``JobConfig.run_name``) covers the world size, the global batch and the
precision actually used: ``--local`` and a 2-worker Ray run of the same job are two runs, with
two MLflow runs and two checkpoint folders.

The identity is also recorded where a run continues from (``identity.json`` in its checkpoint
folder, the ``ltray.identity`` tag of its MLflow run), and a run refuses to continue one whose
recorded identity differs, naming the difference.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ltray.config import JobConfig
from ltray.errors import LtrayError
from ltray.losses.uniformity import resolve_gram
from ltray.secrets import redact_url
from ltray.train.session import LOCAL_FOLDER
from ltray.train.storage import Storage

IDENTITY_FILE = "identity.json"
IDENTITY_TAG = "ltray.identity"


@dataclass(frozen=True)
class RunIdentity:
    run_name: str
    world_size: int
    global_batch: int
    precision: str  # bf16 | fp32
    device: str  # cuda | cpu

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """'world_size 1 there, 2 here', for every field that differs."""
        mine = asdict(self)
        return [
            f"{key} {recorded.get(key, 'not recorded')} there, {mine[key]} here"
            for key in mine
            if recorded.get(key) != mine[key]
        ]


def resolve_job(job: JobConfig, *, world_size: int, use_gpu: bool, num_classes: int) -> JobConfig:
    """The job with every machine-dependent choice made: the worker count actually used, GPUs
    on or off, the precision (``auto``: bf16 on GPUs, fp32 on the CPU), the uniformity Gram's
    (``auto``: bf16x3 on GPUs from 2,048 classes, fp32 otherwise) and the class count."""
    precision = job.scaling.precision
    if precision == "auto":
        precision = "bf16" if use_gpu else "fp32"
    scaling = job.scaling.model_copy(
        update={"num_workers": world_size, "use_gpu": use_gpu, "precision": precision}
    )
    check_class_count(job, num_classes)
    model = job.model.model_copy(update={"num_classes": num_classes})
    device = torch.device("cuda" if use_gpu else "cpu")
    uniformity = job.loss.uniformity.model_copy(
        update={"gram_dtype": resolve_gram(job.loss.uniformity.gram_dtype, device, num_classes)}
    )
    loss = job.loss.model_copy(update={"uniformity": uniformity})
    return job.model_copy(update={"scaling": scaling, "model": model, "loss": loss})


def check_class_count(job: JobConfig, num_classes: int) -> None:
    """``model.num_classes``, where given, must be the data set's class count."""
    if job.model.num_classes is not None and job.model.num_classes != num_classes:
        raise LtrayError(
            f"data set {redact_url(job.data.url)} has {num_classes} classes but "
            f"model.num_classes is {job.model.num_classes}"
        )


def identity_of(resolved: JobConfig) -> RunIdentity:
    scaling = resolved.scaling
    return RunIdentity(
        run_name=resolved.run_name(),
        world_size=scaling.num_workers,
        global_batch=resolved.optim.batch_size * scaling.num_workers,
        precision=str(scaling.precision),
        device="cuda" if scaling.use_gpu is True else "cpu",
    )


def refuse_if_different(identity: RunIdentity, recorded: dict[str, Any], where: str) -> None:
    differences = identity.differences(recorded)
    if differences:
        raise LtrayError(
            f"{where} belongs to another training of run {identity.run_name} "
            f"({'; '.join(differences)}); it will not be continued: pass --fresh to start over"
        )


def claim_checkpoint_folder(storage: Storage, identity: RunIdentity) -> None:
    """Record the identity in the run's checkpoint folder, or refuse a folder another training
    wrote: one with another recorded identity, or checkpoints and no record at all."""
    record = f"{identity.run_name}/{IDENTITY_FILE}"
    where = f"checkpoint folder {redact_url(storage.url_of(identity.run_name))}"
    if storage.exists(record):
        recorded = json.loads(storage.read_bytes(record))
        refuse_if_different(identity, recorded, where)
        return
    if has_checkpoints(storage, identity.run_name):
        raise LtrayError(
            f"{where} holds checkpoints but no record of how they were trained (an older "
            "ltray wrote them); it will not be continued: pass --fresh to start over"
        )
    storage.write_bytes(record, identity.as_json().encode())


def has_checkpoints(storage: Storage, run_name: str) -> bool:
    """Whether the run's folder holds a checkpoint: Ray's (``RUN/checkpoint_*``) or a
    ``--local`` run's (``RUN/local/checkpoint_*``)."""
    return any(
        name.startswith("checkpoint_")
        for folder in (run_name, f"{run_name}/{LOCAL_FOLDER}")
        for name in storage.list(folder)
    )
