"""``ltray report``'s output: one self-contained HTML page (figures inlined, no script, no
network), the same content as Markdown beside its figures, the numbers as JSON, and the table
as text for the terminal.

The figures: test accuracy per shot group, method by method (mean and std over seeds), and the
logit-decomposition analysis of :mod:`ltray.analysis.analyze`, one run per method overlaid.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from ltray.analysis.run_report import COLUMNS, Method, ReportRun, RunReport
from ltray.errors import LtrayError

HEADERS = {"all": "All", "many": "Many", "medium": "Medium", "few": "Few"}


@dataclass
class Figure:
    path: Path
    caption: str


# --- the table -------------------------------------------------------------------------------
def text_table(report: RunReport) -> list[str]:
    """The methods x (all, many, medium, few) table, top-1 % on test, as aligned text."""
    rows = [["method", "seeds", *(HEADERS[c] for c in COLUMNS)]]
    rows += [[m.label, str(len(m.runs)), *(m.cell(c) for c in COLUMNS)] for m in report.methods]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        right = (v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True))
        cells = [row[0].ljust(widths[0]), *right]
        lines.append("  ".join(cells).rstrip())
    return lines


def numbers(report: RunReport) -> dict:
    """The table and every run's own numbers, as JSON-ready data (nan as null)."""

    def clean(value: float) -> float | None:
        return None if math.isnan(value) else value

    methods = []
    for method in report.methods:
        stats = {}
        for column in COLUMNS:
            mean, std = method.mean_std(column)
            stats[column] = {"mean": clean(mean), "std": clean(std)}
        runs = [
            {"run_id": r.run_id, "name": r.name, "seed": r.seed, **_run_numbers(r)}
            for r in method.runs
        ]
        methods.append({"label": method.label, "seeds": len(method.runs), **stats, "runs": runs})
    return {"title": report.title, "store": report.store, "methods": methods, "notes": report.notes}


def _run_numbers(run: ReportRun) -> dict[str, float | None]:
    method = Method("", [run])
    return {c: (None if math.isnan(v := method.mean_std(c)[0]) else v) for c in COLUMNS}


# --- figures ---------------------------------------------------------------------------------
def accuracy_figure(report: RunReport, path: Path) -> Figure:
    """Grouped bars: test top-1 per shot group, one colour per method, std as error bars."""
    from matplotlib.figure import Figure as MplFigure

    methods = report.methods
    figure = MplFigure(figsize=(7.5, 4.2 + 0.25 * len(methods)), dpi=110, layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        stats = [method.mean_std(c) for c in COLUMNS]
        means = [0.0 if math.isnan(m) else m for m, _ in stats]
        errors = [0.0 if math.isnan(s) else s for _, s in stats]
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(COLUMNS))]
        label = f"{method.label} (n={len(method.runs)})"
        axes.bar(xs, means, width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(range(len(COLUMNS)), [HEADERS[c] for c in COLUMNS])
    axes.set_ylabel("test top-1 accuracy (%)")
    axes.set_title("Accuracy by shot group (mean ± std over seeds)")
    figure.legend(loc="outside lower center", fontsize="small")  # labels may be long
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path)
    return Figure(path, "Test top-1 accuracy per shot group; error bars: std over seeds.")


def analysis_figures(uri: str, report: RunReport, folder: Path) -> tuple[list[Figure], list[str]]:
    """The decomposition figures of one run per method, overlaid (:mod:`ltray.analysis.analyze`);
    and notes for methods whose runs logged no decomposition."""
    from ltray.analysis import analyze

    histories, notes = [], []
    for method in report.methods:
        run = method.runs[0]
        try:
            histories.append(analyze.load_history(uri, run.run_id, label=method.label))
        except LtrayError as exc:
            notes.append(f"{method.label}: no analysis figures ({exc})")
    if not histories:
        return [], notes
    shown = ", ".join(f"{h.label} ({h.run_id[:8]})" for h in histories)
    paths = analyze.write_figures(histories, folder)
    return [Figure(p, f"{_caption(p)}; runs: {shown}.") for p in paths], notes


def _caption(path: Path) -> str:
    return path.stem.replace("_", " ").capitalize()


# --- the job of a run ------------------------------------------------------------------------
def job_yaml(run: ReportRun) -> str:
    """The run's resolved job as YAML, read back from its params (secrets masked there)."""
    from ltray.train.run_info import job_from_params

    try:
        job = job_from_params(run.params, f"MLflow run {run.run_id}")
    except LtrayError:
        return yaml.safe_dump(dict(sorted(run.params.items())), sort_keys=False)
    dumped = job.model_dump(mode="json", exclude={"submit"})
    return yaml.safe_dump(dumped, sort_keys=False)


# --- Markdown --------------------------------------------------------------------------------
def markdown(report: RunReport, figures: list[Figure], folder: Path) -> str:
    lines = [f"# {report.title}", "", f"Test top-1 accuracy (%), from {report.store}.", ""]
    lines += _markdown_table(report)
    lines += ["", "Mean ± sample std over seeds (n - 1); one seed shows its value.", ""]
    lines += [f"- {note}" for note in report.notes] + ([""] if report.notes else [])
    for figure in figures:
        lines += [f"![{figure.caption}]({figure.path.relative_to(folder).as_posix()})", ""]
        lines += [f"*{figure.caption}*", ""]
    lines += ["## Runs", ""]
    for method, run in _runs_by_method(report):
        lines += [f"### {run.name}: {method.label}", ""]
        if run.via:
            lines += [f"The {run.via}.", ""]
        numbers_ = _run_numbers(run)
        shown = ", ".join(f"{HEADERS[c]} {_pct(numbers_[c])}" for c in COLUMNS)
        lines += [f"Seed {run.seed}: {shown}.", ""]
        lines += [f"- {key}: `{value}`" for key, value in run.provenance().items()]
        lines += ["", "```yaml", job_yaml(run).rstrip(), "```", ""]
    return "\n".join(lines)


def _markdown_table(report: RunReport) -> list[str]:
    header = ["Method", "Seeds", *(HEADERS[c] for c in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in report.methods:
        cells = [m.label.replace("|", "\\|"), str(len(m.runs)), *(m.cell(c) for c in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _runs_by_method(report: RunReport) -> list[tuple[Method, ReportRun]]:
    return [(method, run) for method in report.methods for run in method.runs]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# --- HTML ------------------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222;
       padding: 0 1rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #bbb; padding: 0.3rem 0.7rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eef; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #555; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
pre { background: #f6f6f6; padding: 0.7rem; overflow-x: auto; font-size: 0.85rem; }
.note { color: #844; }
"""


def page(report: RunReport, figures: list[Figure]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(report.title)}: ltray report</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        f"<p>Test top-1 accuracy (%), from {e(report.store)}. Mean ± sample std over seeds "
        "(n - 1); one seed shows its value.</p>",
        _html_table(report),
    ]
    parts += [f'<p class="note">{e(note)}</p>' for note in report.notes]
    for figure in figures:
        data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{e(figure.caption)}">'
            f"<figcaption>{e(figure.caption)}</figcaption></figure>"
        )
    parts.append("<h2>Runs</h2>")
    for method, run in _runs_by_method(report):
        numbers_ = _run_numbers(run)
        shown = ", ".join(f"{HEADERS[c]} {_pct(numbers_[c])}" for c in COLUMNS)
        heading = f"{e(run.name)}: {e(method.label)}"
        parts.append(f'<section class="run" id="run-{run.run_id}"><h3>{heading}</h3>')
        if run.via:
            parts.append(f"<p>The {e(run.via)}.</p>")
        parts.append(f"<p>Seed {e(run.seed)}: {e(shown)}.</p><dl>")
        for key, value in run.provenance().items():
            parts.append(f"<dt>{e(key)}</dt><dd>{e(value)}</dd>")
        parts.append("</dl><details><summary>job</summary>")
        parts.append(f"<pre>{e(job_yaml(run))}</pre></details></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_table(report: RunReport) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in ("Method", "Seeds", *map(HEADERS.get, COLUMNS)))
    rows = [f'<table id="methods"><thead><tr>{head}</tr></thead><tbody>']
    for method in report.methods:
        cells = [f"<td>{e(method.label)}</td>", f'<td class="num">{len(method.runs)}</td>']
        for column in COLUMNS:
            mean, std = method.mean_std(column)
            cells.append(
                f'<td class="num" data-column="{column}" data-mean="{mean!r}" '
                f'data-std="{std!r}">{e(method.cell(column))}</td>'
            )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


# --- writing it all --------------------------------------------------------------------------
def write(uri: str, report: RunReport, folder: Path) -> dict[str, Path]:
    """report.html, report.md, report.json and figures/ in ``folder``; the files by kind."""
    figures_folder = folder / "figures"
    figures_folder.mkdir(parents=True, exist_ok=True)
    figures = [accuracy_figure(report, figures_folder / "accuracy_by_group.png")]
    analysis, notes = analysis_figures(uri, report, figures_folder)
    figures += analysis
    report.notes.extend(notes)
    written = {
        "html": folder / "report.html",
        "markdown": folder / "report.md",
        "json": folder / "report.json",
    }
    written["html"].write_text(page(report, figures))
    written["markdown"].write_text(markdown(report, figures, folder) + "\n")
    written["json"].write_text(json.dumps(numbers(report), indent=1) + "\n")
    return written
