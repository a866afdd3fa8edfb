"""A finished (or interrupted) sweep as a table, a figure and the best trial's job file.

Trials are ranked on the last value of the sweep's metric, from the val split. The best trial
is the best of those that trained every epoch: a trial ASHA stopped early is listed, never
promoted over one judged on all its epochs (unless no trial finished).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ltray.tune.search import EPOCHS_DONE
from ltray.tune.sweep_config import Sweep

FINISHED, STOPPED, ERROR, NOT_RUN = "finished", "stopped early", "error", "not run"
UNFINISHED = "unfinished"  # running or pending when the sweep was interrupted


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    value: float | None  # the metric's last value, None before the trial's first epoch
    epochs: int
    status: str  # FINISHED, STOPPED, ERROR or NOT_RUN
    error: str = ""


def rows_from_results(sweep: Sweep, analysis: Any) -> list[TrialRow]:
    """Rows from a Tune ``ExperimentAnalysis`` (its trials, their last results), best first."""
    from ray.tune import ResultGrid

    epochs_total = sweep.base.schedule.epochs
    metric = sweep.config.metric.name
    rows = []
    results = list(ResultGrid(analysis))
    for trial, result in zip(analysis.trials, results, strict=True):
        metrics = trial.last_result or {}
        epochs = int(metrics.get(EPOCHS_DONE, 0))
        if trial.status == "ERROR":
            status = ERROR
        elif trial.status != "TERMINATED":
            status = UNFINISHED
        elif epochs >= epochs_total:
            status = FINISHED
        elif epochs > 0:
            status = STOPPED
        else:
            status = NOT_RUN
        value = metrics.get(metric)
        error = result.error if status == ERROR else None
        rows.append(
            TrialRow(
                trial_id=str(trial.trial_id),
                params={k: trial.config[k] for k in sweep.config.space if k in trial.config},
                value=float(value) if value is not None else None,
                epochs=epochs,
                status=status,
                error=_first_line(error) if error is not None else "",
            )
        )
    return rank(rows, sweep.config.metric.mode)


def is_complete(sweep: Sweep, rows: list[TrialRow]) -> bool:
    """Every trial of the sweep exists and has ended (finished, stopped early or failed)."""
    ended = [r for r in rows if r.status in (FINISHED, STOPPED, ERROR, NOT_RUN)]
    return len(ended) == len(rows) == sweep.config.search.trials


def rank(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    sign = -1.0 if mode == "max" else 1.0

    def key(row: TrialRow) -> tuple[int, float, str]:
        if row.value is None or math.isnan(row.value):
            return (1, 0.0, row.trial_id)
        return (0, sign * row.value, row.trial_id)

    return sorted(rows, key=key)


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    scored = [r for r in rows if r.value is not None and not math.isnan(r.value)]
    finished = [r for r in scored if r.status == FINISHED]
    return (finished or scored or [None])[0]


def table(sweep: Sweep, rows: list[TrialRow], markdown: bool = False) -> str:
    """The leaderboard: trial, knobs, metric, epochs run, status."""
    knobs = list(sweep.config.space)
    header = ["trial", *knobs, sweep.config.metric.name, "epochs", "status"]
    total = sweep.base.schedule.epochs
    body = [
        [
            row.trial_id,
            *(_show(row.params.get(k)) for k in knobs),
            "-" if row.value is None else f"{row.value:.2f}",
            f"{row.epochs}/{total}",
            row.status + (f": {row.error}" if row.error else ""),
        ]
        for row in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(str(c)) for c in column) for column in zip(header, *body, strict=True)]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        for cells in [header, *body]
    )


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _first_line(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return (lines[-1] if lines else type(error).__name__)[:200]


def best_job_yaml(sweep: Sweep, row: TrialRow, sweep_run: str) -> str:
    """The base job with the best trial's values: a job file ``ltray train`` runs as it is."""
    raw = sweep.trial_raw(row.params)
    value = "-" if row.value is None else f"{row.value:.4f}"
    knobs = ", ".join(f"{k}={_show(v)}" for k, v in row.params.items())
    header = (
        f"# promoted from sweep {sweep_run}, trial {row.trial_id} ({row.status} after "
        f"{row.epochs} epochs): {sweep.config.metric.name} = {value}\n# {knobs}\n"
    )
    return header + yaml.safe_dump(raw, sort_keys=False)


def figure(sweep: Sweep, rows: list[TrialRow], path: Path, sweep_run: str) -> None:
    """The metric against each searched knob, one panel per knob: trials that finished
    filled, those stopped early hollow; log axes for log-uniform knobs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    knobs = list(sweep.config.space)
    fig, axes = plt.subplots(1, len(knobs), figsize=(4 * len(knobs), 3.4), squeeze=False)
    scored = [r for r in rows if r.value is not None and not math.isnan(r.value)]
    for ax, knob in zip(axes[0], knobs, strict=True):
        domain = sweep.config.space[knob]
        categorical = domain.kind in ("choice", "grid") and not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in domain.values
        )
        labels = [str(v) for v in domain.values] if categorical else []
        for status, style in ((FINISHED, "C0"), (STOPPED, "none")):
            chosen = [r for r in scored if r.status == status and knob in r.params]
            xs = [
                labels.index(str(r.params[knob])) if categorical else r.params[knob] for r in chosen
            ]
            ax.scatter(
                xs, [r.value for r in chosen], facecolors=style, edgecolors="C0", label=status
            )
        if categorical:
            ax.set_xticks(range(len(labels)), labels, rotation=20)
        if domain.kind == "loguniform" and any(knob in r.params for r in scored):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(knob)
        ax.set_ylabel(sweep.config.metric.name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"sweep {sweep_run}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
