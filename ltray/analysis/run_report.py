"""What ``ltray report`` shows: the runs it names, grouped into methods, their test accuracy
overall and per shot group as mean +- std over seeds, and each run's provenance.

A target is an MLflow run id, a run name, an experiment name or a sweep (its parent run's id or
name). A sweep stands for its best trial, the one its val metric chose: its other trials were
never selected, and showing their test numbers beside it would invite choosing on test. An
experiment stands for its finished top-level runs (sweeps among them by their best trial).

Runs that differ only in their seed (and in where they kept their files) are one method: their
numbers are aggregated. The sample standard deviation (n - 1) is shown from two seeds on.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ltray.errors import LtrayError
from ltray.secrets import redact_url
from ltray.tracking import (
    BEST_TRIAL_TAG,
    PARENT_TAG,
    RUN_NAME_TAG,
    SWEEP_KIND_TAG,
    TRIAL_TAG,
    open_store,
)

COLUMNS = ("all", "many", "medium", "few")
METRIC_OF = {
    "all": "test/acc",
    "many": "test/acc_many",
    "medium": "test/acc_medium",
    "few": "test/acc_few",
}
# params that say where a run kept its files or which seed it drew, not what method it is
NOT_THE_METHOD = ("seed", "name", "run_name", "world_size", "data.url", "data.loader_workers")
NOT_THE_METHOD_PREFIXES = ("tracking.", "storage.", "data.storage_options")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class ReportRun:
    """One finished training run, as the report shows it."""

    run_id: str
    name: str
    experiment: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    start_ms: int
    end_ms: int | None
    via: str = ""  # how a target reached it: "best trial of sweep NAME"

    @property
    def method(self) -> str:
        return self.tags.get("ltray.method") or self.params.get("loss.name", "?")

    @property
    def seed(self) -> str:
        return self.params.get("seed", "?")

    def method_key(self) -> tuple:
        """What makes two runs the same method: every param but the seed and the places, and
        the data set's fingerprint (not its URL)."""
        kept = {
            k: v
            for k, v in self.params.items()
            if k not in NOT_THE_METHOD and not k.startswith(NOT_THE_METHOD_PREFIXES)
        }
        fingerprint = self.tags.get("ltray.dataset.fingerprint", "")
        return (fingerprint, tuple(sorted(kept.items())))

    def provenance(self) -> dict[str, str]:
        started = datetime.fromtimestamp(self.start_ms / 1000, UTC)
        took = "" if self.end_ms is None else f" (took {_duration(self.end_ms - self.start_ms)})"
        return {
            "MLflow run": f"{self.run_id} (experiment {self.experiment})",
            "started": started.strftime("%Y-%m-%d %H:%M UTC") + took,
            "commit": self.tags.get("mlflow.source.git.commit", "not recorded"),
            "ltray": self.tags.get("ltray.version", "not recorded"),
            "data set": self.tags.get("ltray.dataset", self.params.get("data.url", "?")),
            "data fingerprint": self.tags.get("ltray.dataset.fingerprint", "not recorded"),
            "machine": self.tags.get("ltray.machine", "not recorded"),
            "workers": self.tags.get("ltray.worker_nodes", "not recorded"),
        }


@dataclass
class Method:
    """Runs of one method (seeds), and what the table shows of them."""

    label: str
    runs: list[ReportRun]

    def values(self, column: str) -> list[float]:
        found = (run.metrics.get(METRIC_OF[column]) for run in self.runs)
        return [v for v in found if v is not None and not math.isnan(v)]

    def mean_std(self, column: str) -> tuple[float, float]:
        """(mean, sample std) over the seeds; nan where nothing was logged, std nan for one."""
        values = self.values(column)
        if not values:
            return math.nan, math.nan
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return statistics.fmean(values), std

    def cell(self, column: str) -> str:
        mean, std = self.mean_std(column)
        if math.isnan(mean):
            return "-"
        return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


@dataclass
class RunReport:
    title: str
    store: str  # the tracking URI, credentials masked
    methods: list[Method]
    notes: list[str] = field(default_factory=list)  # runs left out, and why


# --- finding the runs ------------------------------------------------------------------------
def collect(uri: str, targets: Sequence[str], title: str | None = None) -> RunReport:
    """The report's runs, grouped into methods, from ``targets`` in the store at ``uri``."""
    client = open_store(uri)
    finder = _Finder(client, redact_url(uri))
    runs: dict[str, ReportRun] = {}
    for target in targets:
        for run in finder.resolve(target):
            runs.setdefault(run.run_id, run)
    if not runs:
        raise LtrayError(
            f"no finished training run among {', '.join(targets)} in {finder.shown}"
            + (f" ({'; '.join(finder.notes)})" if finder.notes else "")
        )
    methods = group_methods(list(runs.values()))
    return RunReport(title or ", ".join(targets), finder.shown, methods, finder.notes)


class _Finder:
    def __init__(self, client: Any, shown: str) -> None:
        self.client = client
        self.shown = shown
        self.notes: list[str] = []
        self._experiments = {e.experiment_id: e.name for e in client.search_experiments()}

    def resolve(self, target: str) -> list[ReportRun]:
        if _RUN_ID.fullmatch(target):
            found = self._search(f"attributes.run_id = '{target}'")
            if found:
                return self._expand(found[0])
        experiment = self.client.get_experiment_by_name(target)
        if experiment is not None:
            top = self._search("", [experiment.experiment_id])
            runs = [r for r in top if PARENT_TAG not in r.data.tags]
            return [chosen for run in runs for chosen in self._expand(run, quiet=True)]
        found = self._search(f"tags.`{RUN_NAME_TAG}` = '{target}'") or self._search(
            f"attributes.run_name = '{target}'"
        )
        if len(found) > 1:
            ids = ", ".join(r.info.run_id for r in found)
            raise LtrayError(f"{target!r} names {len(found)} MLflow runs ({ids}): give a run id")
        if found:
            return self._expand(found[0])
        raise LtrayError(
            f"{target!r} is no MLflow run id, run name, sweep or experiment in {self.shown}"
        )

    def _search(self, where: str, experiment_ids: list[str] | None = None) -> list[Any]:
        """Matching runs, oldest first (the order they were made in)."""
        found = self.client.search_runs(
            experiment_ids or list(self._experiments),
            filter_string=where,
            max_results=5000,
            order_by=["attributes.start_time ASC"],
        )
        return list(found)

    def _expand(self, run: Any, quiet: bool = False) -> list[ReportRun]:
        """A training run as itself; a sweep's parent as its best trial. ``quiet``: a run that
        has not finished is left out with a note (an experiment's), not an error (a named
        run)."""
        tags = run.data.tags
        if tags.get(SWEEP_KIND_TAG) == "sweep":
            return self._best_trial(run)
        if run.info.status != "FINISHED" or "test/acc" not in run.data.metrics:
            why = run.info.status.lower() if run.info.status != "FINISHED" else "no test metrics"
            if quiet:
                self.notes.append(f"{_name(run)} left out: {why}")
                return []
            raise LtrayError(
                f"MLflow run {run.info.run_id} ({_name(run)}) has not finished training ({why}): "
                "the report shows finished runs"
            )
        if PARENT_TAG in tags and not quiet and TRIAL_TAG in tags:
            self.notes.append(f"{_name(run)} is a sweep trial, shown as you named it")
        return [self._report_run(run)]

    def _best_trial(self, parent: Any) -> list[ReportRun]:
        """A sweep's best trial; none, with a note, while it has chosen none or when that trial
        ended before its test evaluation (ASHA stopped it)."""
        best = parent.data.tags.get(BEST_TRIAL_TAG)
        if best is None:
            self.notes.append(f"sweep {_name(parent)} left out: it has chosen no best trial yet")
            return []
        found = self._search(
            f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' and tags.`{TRIAL_TAG}` = '{best}'",
            [parent.info.experiment_id],
        )
        if not found or "test/acc" not in found[0].data.metrics:
            self.notes.append(
                f"sweep {_name(parent)} left out: its best trial {best} logged no test metrics"
            )
            return []
        metric = parent.data.params.get("metric.name", "its metric")
        via = f"best trial ({metric}) of sweep {_name(parent)}"
        return [self._report_run(found[0], via)]

    def _report_run(self, run: Any, via: str = "") -> ReportRun:
        return ReportRun(
            run_id=run.info.run_id,
            name=_name(run),
            experiment=self._experiments.get(run.info.experiment_id, run.info.experiment_id),
            params=dict(run.data.params),
            tags=dict(run.data.tags),
            metrics=dict(run.data.metrics),
            start_ms=run.info.start_time,
            end_ms=run.info.end_time,
            via=via,
        )


def _duration(ms: int) -> str:
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _name(run: Any) -> str:
    return run.data.tags.get(RUN_NAME_TAG) or run.info.run_name or run.info.run_id


# --- methods ---------------------------------------------------------------------------------
def group_methods(runs: Iterable[ReportRun]) -> list[Method]:
    """Runs grouped by :meth:`ReportRun.method_key`, in the order first met, each labelled by
    its loss, and how it was chosen (a sweep's best trial); where several plain methods share
    a loss, by the params that tell them apart."""
    groups: dict[tuple, list[ReportRun]] = {}
    for run in runs:
        groups.setdefault(run.method_key(), []).append(run)
    members = list(groups.values())
    plain_by_loss: dict[str, list[ReportRun]] = {}
    for runs_of in members:
        if not runs_of[0].via:
            plain_by_loss.setdefault(runs_of[0].method, []).append(runs_of[0])
    methods = []
    for runs_of in members:
        first = runs_of[0]
        siblings = plain_by_loss.get(first.method, [])
        if first.via:
            label = f"{first.method}, {first.via}"
        elif len(siblings) > 1:
            label = f"{first.method} ({_difference(first, siblings)})"
        else:
            label = first.method
        methods.append(Method(label, sorted(runs_of, key=lambda r: (r.seed, r.name))))
    return methods


def _difference(run: ReportRun, siblings: list[ReportRun], shown: int = 3) -> str:
    """The params (at most ``shown``) in which ``run`` differs from its siblings."""
    own = dict(run.method_key()[1])
    others = [dict(other.method_key()[1]) for other in siblings if other is not run]
    keys = sorted(
        {k for other in others for k in own.keys() | other.keys() if own.get(k) != other.get(k)}
    )
    if not keys:
        return f"data {run.tags.get('ltray.dataset.fingerprint', '?')[:8]}"
    parts = [f"{k}={_short(own.get(k, '-'))}" for k in keys[:shown]]
    return ", ".join(parts) + (", ..." if len(keys) > shown else "")


def _short(text: str) -> str:
    """A param as a label shows it: numbers to 4 significant digits."""
    try:
        return f"{float(text):.4g}"
    except ValueError:
        return text
