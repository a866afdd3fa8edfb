"""The job file: typed, validated once at the edge, with ``--set a.b=c`` overrides.

Library code receives these objects, never raw dicts. Every paper constant (DRW epoch, LDAM
margin and scale, the 100 / 20 shot thresholds) is a field with a documented default.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ltray.errors import LtrayError
from ltray.secrets import MASK, is_secret_key, public_url, redact_url

LOSS_NAMES = (
    "ce",
    "focal",
    "class_balanced",
    "ldam_drw",
    "balanced_softmax",
    "logit_adjustment",
    "weight_balancing",
    "dr",
    "crt",
    "lws",
    "tau_norm",
)
DECOUPLED_METHODS = ("crt", "lws", "tau_norm")
# methods with a second stage after the joint one: the decoupled ones, and weight balancing
TWO_STAGE_METHODS = (*DECOUPLED_METHODS, "weight_balancing")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CacheConfig(Section):
    """The node-local shard cache (ltray.data.shard_cache) of a data set on an object store."""

    folder: str = Field(
        description="local folder shared by the node's processes; a shard is kept there as "
        "<sha256>.parquet, so several data sets can share it"
    )
    max_bytes: int = Field(
        ge=1,
        description="bytes of shards kept; beyond it the least recently used are deleted. "
        "A shard larger than this is an error",
    )


class DataConfig(Section):
    url: str = Field(description="data set written by `ltray prepare`: a path or fsspec URL")
    image_size: int = Field(32, ge=8, le=1024, description="side of the square training crop")
    augment: Literal["cifar", "imagenet", "none"] = Field(
        "cifar", description="cifar: pad-4 random crop + flip; imagenet: random resized crop + flip"
    )
    train_split: str = Field("train", description="split to train on")
    val_split: str | None = Field(
        None, description="split for evaluation and model selection; default 'val', else 'test'"
    )
    test_split: str = Field("test", description="split evaluated once, after the last epoch")
    shuffle_buffer: int = Field(8192, ge=1, description="rows in the bounded shuffle buffer")
    sampler: Literal["plain", "class_balanced", "square_root"] = Field(
        "plain",
        description="training epoch's sampling (ltray.data.stream.samplers): plain: every row "
        "once; class_balanced: class-uniform then instance-uniform, with replacement; "
        "square_root: classes in proportion to sqrt(n_c). Evaluation always reads plain",
    )
    loader_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field(
        2,
        description="data-loader processes per rank; auto: the CPUs this process may use, "
        "shared with the node's other training processes, less one (at most 8). The batch "
        "order depends on it: a run resumes with the count its epoch began with",
    )
    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="where images are decoded and augmented: cpu: in the loader processes; "
        "gpu: on the training device (nvjpeg; what it refuses on the CPU, counted); auto: gpu "
        "on GPU workers, cpu on CPU workers. Same batches and augmentation either way",
    )
    on_device: Literal["auto"] | bool = Field(
        "auto",
        description="hold each split decoded on the device (one uint8 tensor, gathered and "
        "augmented there each epoch, same order as streaming); auto: on GPUs, for a split of "
        "one image size within a quarter of the free GPU memory; true also on the CPU",
    )
    verify_sha256: bool = Field(False, description="hash every shard against the manifest")
    read_ahead: int = Field(
        4,
        ge=0,
        le=64,
        description="row groups each loader process reads ahead of decoding, in threads, to hide "
        "the latency of an object store; 0: read in the loader process itself",
    )
    read_ahead_bytes: int = Field(
        256 << 20,
        ge=1,
        description="at most this many bytes of row groups read ahead per loader process "
        "(estimated from the manifest's shard sizes)",
    )
    cache: CacheConfig | None = Field(
        None,
        description="node-local shard cache for a data set on an object store: the first epoch "
        "fetches each shard once per node, later ones read it locally; null: off (and ignored "
        "for local data sets)",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options (credentials, endpoint); never logged"
    )
    mean: tuple[float, float, float] = Field(
        (0.485, 0.456, 0.406), description="per-channel mean for normalisation (ImageNet's)"
    )
    std: tuple[float, float, float] = Field((0.229, 0.224, 0.225), description="per-channel std")
    many_threshold: int = Field(100, ge=1, description="many-shot: more train images than this")
    few_threshold: int = Field(20, ge=1, description="few-shot: fewer train images than this")

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> DataConfig:
        if self.few_threshold > self.many_threshold:
            raise ValueError("few_threshold must not exceed many_threshold")
        return self


class ModelConfig(Section):
    arch: str = Field("resnet32", description="a name from ltray.models.MODELS")
    head: Literal["linear", "cosine"] | None = Field(
        None,
        description="classifier head; default: the one the loss trains (cosine for dr and "
        "ldam_drw, linear for the others); naming another is refused",
    )
    bias: bool = Field(True, description="bias in a linear head")
    channels_last: bool = Field(True, description="channels_last memory format on GPUs")
    num_classes: int | None = Field(
        None, ge=2, description="expected class count; a data set with another count is refused"
    )


class UniformityConfig(Section):
    kind: Literal["mhe_s0", "mhe_s1", "mhe_s2", "gaussian", "none"] = Field(
        "mhe_s2", description="potential: Riesz s=0 (log), 1, 2 energy, or gaussian; none: off"
    )
    weight: float = Field(0.1, ge=0.0, description="lambda_u, the weight of the uniformity term")
    t: float = Field(2.0, gt=0.0, description="temperature of the gaussian potential")
    block_rows: int = Field(
        1024,
        ge=1,
        description="rows of the Gram matrix per block; a multiple of 8 keeps the GPU's "
        "matmuls on 16-byte boundaries",
    )
    gram_dtype: Literal["auto", "fp32", "bf16x3", "bf16"] = Field(
        "auto",
        description="precision of the Gram matmuls: bf16x3 (each operand split in two bf16 "
        "parts, close to fp32, on tensor cores), fp32, or bf16 (coarse: rounds cosines to 8 "
        "bits); auto: bf16x3 on GPUs from 2,048 classes, fp32 otherwise "
        "(ltray/losses/uniformity.py)",
    )


class NormConfig(Section):
    kind: Literal["ring", "hinge", "none"] = Field(
        "ring", description="ring: (||f|| - R)^2; hinge: max(0, R - ||f||)^2; none: off"
    )
    weight: float = Field(0.01, ge=0.0, description="lambda_n, the weight of the norm term")
    radius: float | None = Field(
        None, gt=0.0, description="target feature norm R; None learns R (ring) or uses 1.0 (hinge)"
    )


class DecoupledConfig(Section):
    """Second stage for crt / lws / tau_norm / weight_balancing, on the stage-1 backbone."""

    stage1_loss: str = Field("ce", description="loss of the joint first stage")
    epochs: int = Field(10, ge=0, description="stage-2 epochs (crt, lws); tau_norm needs none")
    lr: float = Field(0.2, gt=0.0, description="stage-2 learning rate")
    batch_size: int = Field(
        512, ge=1, description="stage-2 global batch, split over the workers (class-balanced)"
    )
    weight_decay: float = Field(5.0e-4, ge=0.0, description="stage-2 weight decay")
    tau_grid: list[float] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(21)],
        description="tau values tried by tau_norm, chosen on validation data (never test)",
    )
    max_norm_ratio: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="weight_balancing stage 2: MaxNorm radius of every classifier row, "
        "min + ratio x (max - min) of the stage-1 row norms",
    )
    tau: float | None = Field(
        None,
        ge=0.0,
        description="tau_norm: this tau instead of one chosen on the val split; without a val "
        "split it must be given (prepare one with --val-per-class)",
    )


class LossConfig(Section):
    name: str = Field("ce", description="one of " + ", ".join(LOSS_NAMES))
    # dr (the seed paper's): margin + uniformity + feature norm
    margin: float = Field(0.2, description="additive angular margin m in radians, in [0, pi/2)")
    scale: float = Field(16.0, gt=0.0, description="cosine logit scale s")
    learn_scale: bool = Field(False, description="learn s (as exp of a parameter, kept > 0)")
    margin_warmup_epochs: float = Field(
        0.0, ge=0.0, description="ramp the margin linearly from 0 over this many epochs"
    )
    uniformity: UniformityConfig = Field(
        default_factory=UniformityConfig, description="dr: hyperspherical uniformity of W"
    )
    norm: NormConfig = Field(default_factory=NormConfig, description="dr: feature-norm regulariser")
    prior_tau: float = Field(0.0, ge=0.0, description="dr: add tau * log prior to its logits")
    # baselines
    gamma: float = Field(1.0, ge=0.0, description="focal loss exponent")
    beta: float = Field(0.9999, ge=0.0, lt=1.0, description="class-balanced effective number")
    tau: float = Field(1.0, ge=0.0, description="logit adjustment: tau * log prior")
    ldam_max_margin: float = Field(0.5, gt=0.0, description="LDAM: largest class margin")
    ldam_scale: float = Field(30.0, gt=0.0, description="LDAM: logit scale")
    drw_epoch: int = Field(160, ge=0, description="deferred re-weighting starts at this epoch")
    drw_beta: float = Field(0.9999, ge=0.0, lt=1.0, description="DRW effective-number beta")
    max_norm: float | None = Field(
        None,
        gt=0.0,
        description="weight_balancing stage 1: per-class MaxNorm bound; null: none (the "
        "authors' stage 1 uses weight decay alone)",
    )
    decoupled: DecoupledConfig = Field(
        default_factory=DecoupledConfig, description="crt, lws, tau_norm: the second stage"
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        if name not in LOSS_NAMES:
            close = difflib.get_close_matches(name, LOSS_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown loss {name!r}{hint}; valid: {', '.join(LOSS_NAMES)}")
        return name

    @field_validator("margin")
    @classmethod
    def _margin_range(cls, m: float) -> float:
        if not 0.0 <= m < math.pi / 2:
            raise ValueError(f"margin must be in [0, pi/2), got {m}")
        return m

    @property
    def is_decoupled(self) -> bool:
        """A second stage runs on the classifier after the joint first stage."""
        return self.name in TWO_STAGE_METHODS


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = Field("sgd", description="optimiser")
    lr: float = Field(0.1, gt=0.0, description="learning rate at base_batch_size")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum")
    weight_decay: float = Field(
        2.0e-4, ge=0.0, description="on the model; never on loss parameters"
    )
    batch_size: int = Field(128, ge=1, description="images per worker per step")
    base_batch_size: int = Field(
        128, ge=1, description="global batch at which `lr` is right; see lr_scaling"
    )
    lr_scaling: Literal["linear", "sqrt", "none"] = Field(
        "linear", description="lr *= (global_batch / base_batch_size) ** {1, 0.5, 0}"
    )


class ScheduleConfig(Section):
    epochs: int = Field(200, ge=1, description="training epochs")
    warmup_epochs: float = Field(5.0, ge=0.0, description="linear lr warm-up from 0")
    kind: Literal["multistep", "cosine"] = Field("multistep", description="lr decay after warm-up")
    milestones: list[int] = Field(
        default_factory=lambda: [160, 180], description="multistep: epochs where lr *= gamma"
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="multistep: the lr factor")
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (and the last)")
    select_by: str | None = Field(
        None, description="validation metric for model selection, e.g. 'val/acc'; None: last"
    )
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="cap on training steps per epoch (smoke tests)"
    )
    max_eval_batches: int | None = Field(
        None, ge=1, description="cap on evaluation batches per rank (smoke tests)"
    )
    log_every_steps: int = Field(
        50, ge=1, description="steps between loss checks and progress lines"
    )

    @model_validator(mode="after")
    def _milestones_sorted(self) -> ScheduleConfig:
        if self.milestones != sorted(self.milestones):
            raise ValueError("milestones must be increasing")
        return self


class ScalingConfig(Section):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU on GPUs)")
    use_gpu: Literal["auto"] | bool = Field(
        "auto", description="one GPU per worker; auto: when the cluster has GPUs"
    )
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs Ray reserves per worker")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on GPUs, fp32 on the CPU"
    )
    compile: bool = Field(
        False,
        description="torch.compile the model with its loss (its first steps compile; "
        "bench/bench_step.py --compile measures the gain)",
    )
    max_failures: int = Field(3, ge=-1, description="worker failures tolerated (-1: unlimited)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers over nodes"
    )


class StorageConfig(Section):
    url: str = Field("./ltray-runs", description="checkpoints; any fsspec URL")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for storage.url; never logged"
    )
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    checkpoint_every_steps: int | None = Field(
        None,
        ge=1,
        description="training steps between mid-epoch checkpoints (a kill then loses at most "
        "this many steps); None: at epoch ends only, enough for small sets",
    )
    keep: int = Field(2, ge=1, description="checkpoints kept")


class TrackingConfig(Section):
    uri: str = Field(
        default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db",
        description="MLflow tracking URI, an http(s) server, or 'none'; default: "
        "$MLFLOW_TRACKING_URI where the job runs (as MLflow does), else sqlite:///mlflow.db",
    )
    experiment: str = Field("ltray", description="MLflow experiment name")
    artifact_location: str | None = Field(
        None,
        description="where a new experiment keeps artifacts; default: beside a SQLite store "
        "(mlartifacts/ next to the .db file), the server's choice for an mlflow server",
    )
    log_model: bool = Field(True, description="log the final model to the run")

    @field_validator("artifact_location")
    @classmethod
    def _no_credentials(cls, location: str | None) -> str | None:
        if location is not None and redact_url(location) != location:
            raise ValueError(
                "holds credentials, which MLflow would store with the experiment; give the "
                "artifact store its credentials through the environment"
            )
        return location

    @property
    def enabled(self) -> bool:
        return self.uri.lower() != "none"


# what a cluster job never uploads: data, runs and their tracking stores, environments, history
DEFAULT_EXCLUDES = [
    ".git/",
    ".venv/",
    "venv/",
    "data/",
    "ltray-runs/",
    "ltray-demo/",
    "mlflow.db",
    "mlruns/",
    "mlartifacts/",
    "*.parquet",
    "__pycache__/",
]


class RuntimeEnvConfig(Section):
    """Ray's runtime environment of a submitted job (``ltray submit``); see Ray's docs on
    runtime environments. Credentials never go here: Ray stores the runtime environment with
    the job and shows it on its dashboard."""

    working_dir: str | None = Field(
        ".",
        description="folder uploaded to the cluster, relative to where `ltray submit` runs; the "
        "job file must lie inside it. null: upload nothing (the nodes' image holds the job file)",
    )
    excludes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXCLUDES),
        description="gitignore-style patterns left out of the upload (.gitignore and .rayignore "
        "are honoured as well, as Ray does)",
    )
    pip: list[str] | None = Field(
        None,
        description="requirements installed for the job on the cluster; null: the nodes' own "
        "environment (docker/Dockerfile's image has ltray)",
    )
    image_uri: str | None = Field(
        None, description="a container image for the job (Ray's image_uri; instead of pip)"
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="environment of the job's processes; no credentials (set them on the nodes)",
    )

    @model_validator(mode="after")
    def _pip_or_image(self) -> RuntimeEnvConfig:
        if self.pip is not None and self.image_uri is not None:
            raise ValueError("give pip or image_uri, not both (Ray runs one or the other)")
        return self


class SubmitConfig(Section):
    """How ``ltray submit`` hands the job to a Ray cluster's job API."""

    runtime_env: RuntimeEnvConfig = Field(
        default_factory=RuntimeEnvConfig, description="what the cluster runs the job in"
    )
    entrypoint_num_cpus: float = Field(
        0.0, ge=0.0, description="CPUs reserved for the driver (`ltray train`), apart from workers"
    )
    entrypoint_num_gpus: float = Field(0.0, ge=0.0, description="GPUs reserved for the driver")
    entrypoint_memory: int | None = Field(
        None, ge=0, description="bytes of memory reserved for the driver"
    )
    entrypoint_resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources the driver's node must have"
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="labels stored with the job (shown by `ltray jobs`)"
    )


class JobConfig(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="job name; the run name adds a hash"
    )
    seed: int = Field(0, ge=0, description="seeds model init, data order and augmentation")
    data: DataConfig = Field(description="the data set and its input pipeline")
    model: ModelConfig = Field(default_factory=ModelConfig, description="backbone and head")
    loss: LossConfig = Field(default_factory=LossConfig, description="the method")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimiser and batch")
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="epochs, lr schedule, evaluation"
    )
    scaling: ScalingConfig = Field(
        default_factory=ScalingConfig, description="workers, GPUs, precision, failures"
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="checkpoints")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow")
    submit: SubmitConfig = Field(
        default_factory=SubmitConfig, description="`ltray submit`: runtime env, driver resources"
    )

    def run_name(self) -> str:
        """Deterministic name: the job name plus a hash of everything that shapes the result.

        Re-submitting the same job resumes; changing a hyper-parameter starts a new run. Of
        the scaling section, the worker count (it sets the global batch and the scaled lr) and
        the precision (bf16 and fp32 train differently) count; where the run's storage and
        tracking live, how it is submitted, loader processes, where images are decoded or held,
        and credentials do not (same run, other cluster).
        """
        shaping = self.model_dump(
            mode="json",
            exclude={"scaling": True, "storage": True, "tracking": True, "submit": True},
        )
        shaping["data"].pop("storage_options", None)
        # new credentials for the same data set: the same run
        shaping["data"]["url"] = public_url(self.data.url)
        # how batches are read and decoded: the same batches either way (ltray.train.input_path)
        for how in ("loader_workers", "decode", "on_device"):
            shaping["data"].pop(how, None)
        shaping["scaling"] = {
            "num_workers": self.scaling.num_workers,
            "precision": self.scaling.precision,
        }
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
        return f"{self.name}-{digest[:8]}"


def _format_location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _nearest_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """For an unknown key, the closest valid key in the section it was found in."""
    section: Any = model
    for part in loc[:-1]:
        field = section.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is None or not isinstance(field.annotation, type):
            return ""
        if not issubclass(field.annotation, BaseModel):
            return ""
        section = field.annotation
    close = difflib.get_close_matches(str(loc[-1]), section.model_fields, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _shown_input(loc: tuple[Any, ...], value: Any) -> str:
    """The offending value as the error shows it: masked under a secret key, URL credentials
    masked anywhere."""
    if any(is_secret_key(part) for part in loc if isinstance(part, str)):
        return MASK
    return redact_url(repr(value))


def describe_errors(
    error: ValidationError, source: str, schema: type[BaseModel] | None = None
) -> str:
    """Pydantic's errors as one line: ``SOURCE: a.b: what is wrong (got ...)`` each, an unknown
    key with the nearest valid one in ``schema`` (default: the job's)."""
    lines = []
    for err in error.errors():
        loc = err["loc"]
        where = _format_location(loc)
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: {where}: unknown key{_nearest_key(schema or JobConfig, loc)}")
        elif err["type"] == "missing":
            lines.append(f"{source}: {where}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {where}: {msg} (got {_shown_input(loc, err.get('input'))})")
    return "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (['a', 'b'], value); the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise LtrayError(f"--set {text!r}: expected KEY=VALUE, e.g. loss.margin=0.3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        shown = f"{key}={MASK}" if any(map(is_secret_key, key.split("."))) else redact_url(text)
        raise LtrayError(f"--set {shown!r}: value is not valid YAML") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw job dict with each ``a.b=c`` set; validation comes after."""
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise LtrayError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def validate_job(raw: Any, source: str = "job") -> JobConfig:
    if not isinstance(raw, dict):
        raise LtrayError(
            f"{source}: a job file must be a mapping of sections, got {type(raw).__name__}"
        )
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise LtrayError(describe_errors(exc, source)) from None


def read_job_yaml(path: str | Path, what: str = "job file") -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LtrayError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # the problem and its line, not the snippet YAML quotes: it may hold a secret
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise LtrayError(f"{path}: not valid YAML{where}: {problem}") from None
    return raw if raw is not None else {}


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read a job YAML, apply ``--set`` overrides, validate into a JobConfig."""
    raw = apply_overrides(read_job_yaml(path), overrides or [])
    return validate_job(raw, source=str(path))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
