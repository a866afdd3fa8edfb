"""The sweep file: a base job, a search space over its keys, how to search, what to select on.

Validated once, at the edge, like a job file: unknown keys, a space over a key the job does not
have (or a value the job would refuse), an algorithm that cannot search the space, and a metric
training does not report on the val split are each refused with one line, before any trial.

    name: cifar10-lt-dr                 # default: the sweep file's name
    base: jobs/cifar10_lt.yaml          # a job file (relative to where ltray runs), or a mapping
    set: {schedule.epochs: 60}          # overrides of the base job, as `ltray train --set`
    space:
      loss.margin: {uniform: [0.0, 0.5]}
      loss.uniformity.weight: {loguniform: [0.001, 1.0]}
      loss.uniformity.kind: {choice: [mhe_s1, mhe_s2, gaussian]}
    search: {algorithm: optuna, trials: 32, seed: 0}
    scheduler: {kind: asha, grace_epochs: 20, reduction_factor: 3}
    metric: {name: val/acc_balanced, mode: max}
    scaling: {num_workers: 1}           # each trial's workers (over the base job's scaling)
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ltray.config import (
    JobConfig,
    Section,
    SubmitConfig,
    apply_overrides,
    describe_errors,
    flatten,
    parse_override,
    read_job_yaml,
    validate_job,
)
from ltray.errors import LtrayError

DOMAIN_KINDS = ("uniform", "loguniform", "integer", "choice", "grid")
# what a trial must not change: where its runs and metrics go, and how many workers it has
# (the sweep's concurrency is planned from one trial's scaling)
UNSWEEPABLE = ("name", "storage.", "tracking.", "scaling.")
# in the base job's run name already (name, base, set, scaling), or not shaping the results
_NOT_SHAPING = {"name", "base", "set", "scaling", "max_concurrent_trials", "submit"}


class Domain(Section):
    """One knob's values: exactly one of the kinds."""

    uniform: tuple[float, float] | None = Field(None, description="a float in [low, high]")
    loguniform: tuple[float, float] | None = Field(
        None, description="a float in [low, high], uniform in log space (low > 0)"
    )
    integer: tuple[int, int] | None = Field(None, description="an integer in [low, high]")
    choice: list[Any] | None = Field(None, description="one of these values, drawn at random")
    grid: list[Any] | None = Field(None, description="every one of these values (search: grid)")

    @model_validator(mode="after")
    def _exactly_one(self) -> Domain:
        given = [kind for kind in DOMAIN_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(DOMAIN_KINDS)} (got {given or 'none'})"
            )
        kind = given[0]
        value = getattr(self, kind)
        if kind in ("uniform", "loguniform", "integer") and not value[0] < value[1]:
            raise ValueError(f"{kind}: low must be below high, got {list(value)}")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError(f"loguniform: low must be > 0, got {value[0]}")
        if kind in ("choice", "grid") and not value:
            raise ValueError(f"{kind}: give at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in DOMAIN_KINDS if getattr(self, kind) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, self.kind)

    def probes(self) -> list[Any]:
        """Values that a job must accept for the whole domain to be valid: the bounds of a
        range, every listed value."""
        value = self.values
        return list(value) if self.kind in ("choice", "grid") else [value[0], value[1]]


class SearchConfig(Section):
    algorithm: Literal["random", "grid", "optuna"] = Field(
        "random",
        description="random: independent draws; grid: every combination of the grid domains; "
        "optuna: Optuna's TPE (multivariate, seeded)",
    )
    trials: int = Field(ge=1, description="trials to run (grid: a multiple of the grid's points)")
    seed: int = Field(0, ge=0, description="seeds the search algorithm's draws")


class SchedulerConfig(Section):
    kind: Literal["asha", "none"] = Field(
        "asha", description="asha: stop unpromising trials early (ASHA); none: run every trial"
    )
    grace_epochs: int = Field(1, ge=1, description="asha: epochs every trial runs at least")
    reduction_factor: float = Field(
        3.0, gt=1.0, description="asha: keep 1/reduction_factor of the trials at each rung"
    )


class MetricConfig(Section):
    name: str = Field(
        "val/acc_balanced",
        description="per-epoch metric to select on: a val/ metric (mean per-class accuracy "
        "by default); selection never reads test",
    )
    mode: Literal["max", "min"] = Field("max", description="max or min of the metric is best")


class SweepConfig(Section):
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="default: the file's name"
    )
    base: str | dict[str, Any] = Field(description="the base job: a job file path, or inline")
    set: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the base job: {key.path: value}"
    )
    space: dict[str, Domain] = Field(description="job key -> its domain")
    search: SearchConfig = Field(description="the search algorithm and the number of trials")
    scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig, description="early stopping"
    )
    metric: MetricConfig = Field(default_factory=MetricConfig, description="what selects")
    scaling: dict[str, Any] = Field(
        default_factory=dict, description="each trial's scaling, over the base job's"
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="default: as many trials as the cluster holds at once"
    )
    submit: SubmitConfig | None = Field(
        None, description="`ltray submit`: runtime env, driver resources; default: the base job's"
    )

    @field_validator("space")
    @classmethod
    def _not_empty(cls, space: dict[str, Domain]) -> dict[str, Domain]:
        if not space:
            raise ValueError("give at least one key to search")
        return space


class Sweep:
    """A validated sweep: its config, the base job (as validated and as the raw mapping the
    promoted job is written from) and its name, which changes with anything that shapes it."""

    def __init__(self, config: SweepConfig, base_raw: dict[str, Any], source: str) -> None:
        self.config = config
        self.base_raw = base_raw
        self.source = source
        self.base = validate_job(base_raw, source=f"{source}: base job")
        self.name = config.name or Path(source).stem.replace("_", "-")

    @property
    def run_name(self) -> str:
        """``NAME-HASH``: the same sweep file (and base job) resumes; any change is a new sweep."""
        shaping = {
            "base": self.base.run_name(),
            **self.config.model_dump(mode="json", exclude=_NOT_SHAPING),
        }
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
        return f"{self.name}-{digest[:8]}"

    def trial_raw(self, params: dict[str, Any]) -> dict[str, Any]:
        """The base job's mapping with a trial's values set (``params``: {key.path: value})."""
        return apply_overrides(self.base_raw, [_override(k, v) for k, v in params.items()])

    def trial_job(self, params: dict[str, Any]) -> JobConfig:
        return validate_job(self.trial_raw(params), source=f"{self.source}: trial")

    @property
    def grid_points(self) -> int:
        return math.prod(len(d.values) for d in self.config.space.values() if d.kind == "grid")


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``--set`` on a sweep: keys of the sweep file (search.trials=8) go to the sweep, the
    rest (schedule.epochs=2) to its base job."""
    sweep, job = [], []
    for text in overrides:
        path, _ = parse_override(text)
        (sweep if path[0] in SweepConfig.model_fields else job).append(text)
    return sweep, job


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and check a sweep file (with ``--set`` overrides); see the module docstring."""
    return build_sweep(read_job_yaml(path, what="sweep file"), str(path), overrides)


def build_sweep(raw: Any, source: str, overrides: list[str] | None = None) -> Sweep:
    """Check a sweep given as a mapping (read from ``source``), with ``--set`` overrides."""
    sweep_overrides, job_overrides = split_overrides(overrides or [])
    if not isinstance(raw, dict):
        raise LtrayError(f"{source}: a sweep file must be a mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, sweep_overrides)
    if not isinstance(raw, dict):
        raise LtrayError(f"{source}: a sweep file must be a mapping, got {type(raw).__name__}")
    try:
        config = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise LtrayError(describe_errors(exc, source, SweepConfig)) from None
    base_raw = _base_mapping(config, source)
    job_sets = [_override(k, v) for k, v in config.set.items()] + job_overrides
    base_raw = apply_overrides(base_raw, job_sets)
    if config.scaling:
        base_raw["scaling"] = {**(base_raw.get("scaling") or {}), **config.scaling}
    sweep = Sweep(config, base_raw, source)
    check_space(sweep)
    check_search(sweep)
    return sweep


def _base_mapping(config: SweepConfig, source: str) -> dict[str, Any]:
    if isinstance(config.base, dict):
        return dict(config.base)
    path = Path(config.base)
    if not path.is_file():
        raise LtrayError(
            f"{source}: base: job file {config.base} not found (a path relative to the folder "
            f"ltray runs in, {Path.cwd()})"
        )
    raw = read_job_yaml(path)
    if not isinstance(raw, dict):
        raise LtrayError(f"{path}: a job file must be a mapping of sections")
    return raw


def check_space(sweep: Sweep) -> None:
    """Every key is a value of the job, and the job accepts every value of its domain."""
    keys = flatten(sweep.base.model_dump(mode="json"))
    for key, domain in sweep.config.space.items():
        where = f"{sweep.source}: space: {key}"
        if key.startswith(UNSWEEPABLE) or key == "name":
            raise LtrayError(
                f"{where}: cannot be searched (a trial's name, storage, tracking and scaling "
                "belong to the sweep; set the trials' scaling in the sweep's scaling section)"
            )
        if key not in keys:
            close = [k for k in keys if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise LtrayError(f"{where}: the job has no such key{hint}")
        for value in domain.probes():
            try:
                sweep.trial_job({key: value})
            except LtrayError as exc:
                reason = str(exc).split("trial: ", 1)[-1]
                raise LtrayError(
                    f"{where}: value {value!r} is refused by the job: {reason}"
                ) from None


def check_search(sweep: Sweep) -> None:
    """The algorithm can search the space, and ASHA's grace fits in the job's epochs."""
    config, where = sweep.config, f"{sweep.source}:"
    grids = [key for key, domain in config.space.items() if domain.kind == "grid"]
    if config.search.algorithm == "grid":
        others = [key for key in config.space if key not in grids]
        if others:
            raise LtrayError(
                f"{where} search.algorithm grid needs a grid domain for every key; "
                f"{', '.join(others)} {'has' if len(others) == 1 else 'have'} another kind"
            )
        if config.search.trials % sweep.grid_points:
            raise LtrayError(
                f"{where} search.trials={config.search.trials} is not a multiple of the grid's "
                f"{sweep.grid_points} points"
            )
    elif grids:
        raise LtrayError(
            f"{where} space: {', '.join(grids)}: a grid domain needs search.algorithm grid "
            f"(with {config.search.algorithm}, use choice)"
        )
    epochs = sweep.base.schedule.epochs
    if config.scheduler.kind == "asha" and config.scheduler.grace_epochs > epochs:
        raise LtrayError(
            f"{where} scheduler.grace_epochs={config.scheduler.grace_epochs} exceeds the job's "
            f"schedule.epochs={epochs}: ASHA could never stop a trial"
        )
