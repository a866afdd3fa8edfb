"""The analysis figures of :mod:`ltray.analysis.analyze`, as PNG files.

Drawn on ``matplotlib.figure.Figure`` objects, which render with the Agg canvas when saved:
no display is needed and pyplot's global state (its backend, its open figures) is left as the
user has it. Training counts are on a log axis, since a long tail spans orders of magnitude;
the many / medium / few boundaries are drawn between the groups' classes. Runs are told apart
by colour, epochs by panel (per-class figures) or line style (the angle distribution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ltray.data.profiles import GROUPS

DPI = 110
PANEL_INCHES = (5.6, 4.4)  # width, height of one panel
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
MANY_CLASSES = 60  # beyond this, classes are faint dots under a binned mean line
COUNT_AXIS = "training images of the class (log scale)"
GROUP_ORDER = tuple(reversed(GROUPS))  # few, medium, many: by training count


@dataclass
class RunEpochs:
    """One run as drawn: its legend label and its logged records at the chosen epochs, in the
    order chosen (panel k shows each run's k-th chosen epoch)."""

    label: str
    records: dict[int, dict]


@dataclass
class PerClassSeries:
    """One per-class quantity of the logged table, as a figure draws it."""

    key: str  # in the record's "per_class" table
    marker: str
    name: str | None = None  # in the legend, where a figure draws more than one series
    linestyle: str = "-"


def draw_all(runs: Sequence[RunEpochs], out: Path) -> list[Path]:
    """Every figure into ``out``; the angle distribution only if some record holds the
    histogram (runs logged before it existed do not)."""
    paths = [
        per_class_figure(
            runs,
            [PerClassSeries("classifier_norm", "o")],
            r"classifier norm $\|w_j\|$",
            "Classifier norm per class",
            out / "classifier_norm.png",
        ),
        per_class_figure(
            runs,
            [PerClassSeries("feature_norm_mean", "o")],
            r"mean feature norm $\|f\|$ of its images",
            "Feature norm per class",
            out / "feature_norm.png",
        ),
        per_class_figure(
            runs,
            [
                PerClassSeries("cos_target_mean", "o", r"$\cos\theta_y$ (its own class)"),
                PerClassSeries("cos_other_max_mean", "x", "cos to the nearest other class", "--"),
            ],
            r"mean $\cos\theta$ of its images",
            "Cosine to the true class per class",
            out / "cosine.png",
        ),
    ]
    if any("angle_histogram" in record for run in runs for record in run.records.values()):
        paths.append(angle_distribution_figure(runs, out / "angle_distribution.png"))
    paths.append(accuracy_figure(runs, out / "accuracy.png"))
    return paths


def _figure(panels: int) -> tuple[Figure, list[Axes]]:
    width, height = PANEL_INCHES
    figure = Figure(figsize=(width * panels, height), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI, format="png")
    return path


def _column(record: dict, key: str) -> np.ndarray:
    return np.asarray(record["per_class"][key], dtype=float)  # a logged NaN stays NaN


def _plot_per_class(
    axes: Axes,
    counts: np.ndarray,
    values: np.ndarray,
    color: str,
    label: str,
    series: PerClassSeries,
) -> None:
    """Each class as a point at (training count, value); few classes joined by a line in count
    order, many classes as faint dots under the mean of log-spaced count bins."""
    keep = (counts > 0) & np.isfinite(values)
    x, y = counts[keep], values[keep]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if len(x) <= MANY_CLASSES:
        axes.plot(
            x,
            y,
            marker=series.marker,
            linestyle=series.linestyle,
            color=color,
            label=label,
            linewidth=0.8,
            markersize=5,
        )
        return
    axes.scatter(x, y, s=5, marker=series.marker, color=color, alpha=0.25, linewidths=0.5)
    edges = np.geomspace(x[0], x[-1] * 1.0001, 13)
    which = np.digitize(x, edges) - 1
    centres = [math.sqrt(edges[b] * edges[b + 1]) for b in range(12) if (which == b).any()]
    means = [y[which == b].mean() for b in range(12) if (which == b).any()]
    axes.plot(
        centres,
        means,
        color=color,
        linestyle=series.linestyle,
        label=f"{label} (bin mean)",
        linewidth=2,
    )


def _count_axis(axes: Axes) -> None:
    """Log-scale training counts, ticked 1, 2, 5, 10, 20, ... as plain numbers."""
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(COUNT_AXIS)


def _group_boundaries(axes: Axes, record: dict) -> None:
    """Dotted lines between the many / medium / few classes, each region named at the top."""
    counts = _column(record, "train_count")
    groups = np.asarray(record["per_class"]["group"])
    spans = [
        (group, counts[groups == group].min(), counts[groups == group].max())
        for group in GROUP_ORDER
        if (groups == group).any()
    ]
    top = axes.get_xaxis_transform()  # x in data, y in axes fraction
    for (_, _, low_max), (_, high_min, _) in zip(spans, spans[1:], strict=False):
        axes.axvline(math.sqrt(max(low_max, 1) * high_min), color="0.5", linestyle=":")
    for group, low, high in spans:
        centre = math.sqrt(max(low, 1) * max(high, 1))
        axes.text(centre, 0.98, group, transform=top, ha="center", va="top", color="0.4")


def _panel_epochs(runs: Sequence[RunEpochs], panel: int) -> list[tuple[int, RunEpochs, int]]:
    """(run index, run, epoch) of the runs that have a ``panel``-th chosen epoch."""
    return [
        (i, run, list(run.records)[panel]) for i, run in enumerate(runs) if len(run.records) > panel
    ]


def _epochs_title(epochs: Sequence[int]) -> str:
    distinct = sorted(set(epochs))
    if len(distinct) == 1:
        return f"epoch {distinct[0]}"
    return "epochs " + " / ".join(str(e) for e in epochs)


def per_class_figure(
    runs: Sequence[RunEpochs],
    series: Sequence[PerClassSeries],
    ylabel: str,
    title: str,
    path: Path,
) -> Path:
    """One panel per chosen epoch: each class's value against its training count, runs
    overlaid."""
    panels = max(len(run.records) for run in runs)
    figure, axes_row = _figure(panels)
    for panel, axes in enumerate(axes_row):
        shown = _panel_epochs(runs, panel)
        for i, run, epoch in shown:
            record = run.records[epoch]
            for one in series:
                label = run.label if one.name is None else f"{run.label}: {one.name}"
                if len({e for _, _, e in shown}) > 1:
                    label += f", epoch {epoch}"
                color = COLORS[i % len(COLORS)]
                values = _column(record, one.key)
                counts = _column(record, "train_count")
                _plot_per_class(axes, counts, values, color, label, one)
        _group_boundaries(axes, shown[0][1].records[shown[0][2]])
        _count_axis(axes)
        axes.set_ylabel(ylabel)
        axes.set_title(f"{title}, {_epochs_title([e for _, _, e in shown])}")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    return _save(figure, path)


LINE_STYLES = ("--", "-", ":", "-.")  # the first chosen epoch dashed, the next solid, ...


def angle_distribution_figure(runs: Sequence[RunEpochs], path: Path) -> Path:
    """The share of classifier-row pairs per degree of angle between them, at each chosen
    epoch (line style) of each run (colour)."""
    figure, (axes,) = _figure(1)
    lowest, highest = 180.0, 0.0
    for i, run in enumerate(runs):
        for k, (epoch, record) in enumerate(run.records.items()):
            if "angle_histogram" not in record:
                continue
            edges = np.asarray(record["angle_histogram"]["bin_edges_deg"], dtype=float)
            counts = np.asarray(record["angle_histogram"]["counts"], dtype=float)
            share = 100.0 * counts / max(counts.sum(), 1.0) / np.diff(edges)
            axes.stairs(
                share,
                edges,
                color=COLORS[i % len(COLORS)],
                linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                label=f"{run.label}, epoch {epoch}",
                linewidth=1.5,
            )
            filled = np.flatnonzero(counts)
            if len(filled):
                lowest = min(lowest, edges[filled[0]])
                highest = max(highest, edges[filled[-1] + 1])
    if lowest < highest:
        axes.set_xlim(max(0.0, lowest - 5.0), min(180.0, highest + 5.0))
    axes.set_xlabel("angle between two classifier rows (degrees)")
    axes.set_ylabel("share of class pairs (% per degree)")
    axes.set_title("Angles between classifier rows, all pairs")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def accuracy_figure(runs: Sequence[RunEpochs], path: Path) -> Path:
    """Each class's accuracy against its training count at each run's last chosen epoch, with
    each run's mean over classes (balanced accuracy) as a dashed line."""
    figure, (axes,) = _figure(1)
    epochs = []
    for i, run in enumerate(runs):
        epoch = list(run.records)[-1]
        epochs.append(epoch)
        record = run.records[epoch]
        color = COLORS[i % len(COLORS)]
        seen = _column(record, "count") > 0  # a class without evaluated images has no accuracy
        accuracy = np.where(seen, _column(record, "accuracy"), math.nan)
        counts = _column(record, "train_count")
        _plot_per_class(axes, counts, accuracy, color, run.label, PerClassSeries("accuracy", "o"))
        mean = np.nanmean(accuracy) if np.isfinite(accuracy).any() else math.nan
        axes.axhline(
            mean, color=color, linestyle="--", linewidth=1, label=f"mean over classes {mean:.1f}%"
        )
    _group_boundaries(axes, runs[0].records[epochs[0]])
    _count_axis(axes)
    axes.set_ylabel("top-1 accuracy on the evaluated split (%)")
    axes.set_ylim(-3, 103)
    axes.set_title(f"Per-class accuracy, {_epochs_title(epochs)}")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)
