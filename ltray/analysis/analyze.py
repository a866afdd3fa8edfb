"""``ltray analyze``: the seed paper's analysis of training, from what training logged.

Every evaluated epoch, training logs the logit decomposition as the MLflow artifact
``decomposition/epoch_NNNN.json`` (:func:`ltray.analysis.decomposition.summarize_decomposition`
and the per-class accuracy). A :class:`RunHistory` holds those records of one run;
:func:`write_figures` draws them (:mod:`ltray.analysis.figures`), several runs overlaid, and
:func:`write_analysis` adds ``analysis.json`` listing what was drawn. Training draws the same
figures at the end of each run (:func:`log_run_figures`), from the records it holds in memory:
those of the epochs it evaluated since it last started, so a resumed run's figures begin at
the resume (``ltray analyze`` reads them all from MLflow).

Epochs are the numbers training logged (0-based, as its progress lines print them); a negative
one counts from the end of the epochs a run evaluated, as Python indexes a list: ``-1`` is the
last evaluated epoch, ``-2`` the one before. The default is the first evaluated and the last.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltray.errors import LtrayError

if TYPE_CHECKING:
    from ltray.tracking import RecordedRun

DECOMPOSITION_FOLDER = "decomposition"  # the artifact folder training logs epoch_NNNN.json to
ANALYSIS_FOLDER = "analysis"  # the artifact folder the figures go to
INDEX_FILE = "analysis.json"
DEFAULT_EPOCHS = (0, -1)  # positions: the first evaluated epoch and the last


@dataclass
class RunHistory:
    """One run's logged decomposition records, by epoch, and how figures name the run."""

    run_id: str
    label: str
    epochs: dict[int, dict]  # epoch -> the logged JSON ({"metrics", "per_class", ...})


def run_label(run_name: str, loss: str | None, seed: str | int | None) -> str:
    """What a legend calls a run: its loss and seed first (what differs between the runs
    one overlays), then its name."""
    if loss is None:
        return run_name
    return f"{loss}, seed {seed} ({run_name})" if seed is not None else f"{loss} ({run_name})"


def load_history(tracking_uri: str, run_id: str, label: str | None = None) -> RunHistory:
    """The decomposition records run ``run_id`` logged to ``tracking_uri``; ``label`` names it
    in figures (default: :func:`run_label` from its params)."""
    from ltray.tracking import RecordedRun

    return history_of(RecordedRun(tracking_uri, run_id), label)


def history_of(run: RecordedRun, label: str | None = None) -> RunHistory:
    """:func:`load_history` of a run already opened."""
    from ltray.tracking import no_progress_bars

    epochs: dict[int, dict] = {}
    files = run.client.list_artifacts(run.run_id, DECOMPOSITION_FOLDER)
    if files:
        with tempfile.TemporaryDirectory() as folder, no_progress_bars():
            local = Path(run.client.download_artifacts(run.run_id, DECOMPOSITION_FOLDER, folder))
            for path in local.glob("epoch_*.json"):
                epochs[int(path.stem.removeprefix("epoch_"))] = json.loads(path.read_text())
    if not epochs:
        raise LtrayError(
            f"MLflow run {run.run_id} ({run.run_name}) logged no decomposition "
            f"({DECOMPOSITION_FOLDER}/epoch_*.json): it ended before its first evaluation"
        )
    label = label or run_label(run.run_name, run.params.get("loss.name"), run.params.get("seed"))
    return RunHistory(run.run_id, label, dict(sorted(epochs.items())))


def resolve_epochs(history: RunHistory, epochs: Sequence[int] | None = None) -> list[int]:
    """The epochs of ``history`` that ``epochs`` names (see the module docstring), in the
    order given, each once."""
    evaluated = sorted(history.epochs)
    if not evaluated:
        raise LtrayError(f"run {history.run_id} ({history.label}) holds no evaluated epoch")
    chosen: list[int] = []
    for epoch in DEFAULT_EPOCHS if epochs is None else epochs:
        if epochs is None or epoch < 0:
            if -epoch > len(evaluated):
                raise _not_evaluated(history, epoch, evaluated)
            epoch = evaluated[epoch]
        elif epoch not in history.epochs:
            raise _not_evaluated(history, epoch, evaluated)
        if epoch not in chosen:
            chosen.append(epoch)
    return chosen


def _not_evaluated(history: RunHistory, epoch: int, evaluated: list[int]) -> LtrayError:
    return LtrayError(
        f"run {history.run_id} ({history.label}) did not evaluate epoch {epoch}; it evaluated "
        f"epochs {', '.join(map(str, evaluated))} (a negative epoch counts from its last)"
    )


def write_figures(
    histories: Sequence[RunHistory], out: Path, epochs: Sequence[int] | None = None
) -> list[Path]:
    """Draw the analysis figures of ``histories`` (overlaid) into ``out``; return their paths.

    Per-class classifier norm, feature norm and cosines against the training count at each
    chosen epoch, the pairwise-angle distribution at each chosen epoch, and the per-class
    accuracy at the last chosen one. ``epochs``: see the module docstring.
    """
    from ltray.analysis import figures

    if not histories:
        raise LtrayError("no run to analyze")
    chosen = [resolve_epochs(history, epochs) for history in histories]
    runs = [
        figures.RunEpochs(h.label, {e: h.epochs[e] for e in c})
        for h, c in zip(histories, chosen, strict=True)
    ]
    out.mkdir(parents=True, exist_ok=True)
    return figures.draw_all(runs, out)


def write_analysis(
    histories: Sequence[RunHistory], out: Path, epochs: Sequence[int] | None = None
) -> list[Path]:
    """:func:`write_figures` and ``analysis.json`` (the runs, the epochs drawn, the figures)."""
    drawn = write_figures(histories, out, epochs)
    index: dict[str, Any] = {
        "runs": [
            {"run_id": h.run_id, "label": h.label, "epochs": resolve_epochs(h, epochs)}
            for h in histories
        ],
        "figures": [path.name for path in drawn],
    }
    (out / INDEX_FILE).write_text(json.dumps(index, indent=1))
    return [*drawn, out / INDEX_FILE]


def log_run_figures(tracker: Any, history: RunHistory, warn: Callable[[str], None]) -> None:
    """Training's figures at the end of a run: drawn from ``history`` (the records the run
    holds in memory) and logged with ``tracker.log_file`` to ``analysis/``. A failure costs
    the figures, never the finished run: it is one ``warn``-ed line."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            for path in write_analysis([history], Path(folder)):
                tracker.log_file(path, ANALYSIS_FOLDER)
    except Exception as exc:  # matplotlib, a font, the artifact store: none worth a run
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warn(f"warning: the analysis figures were not logged: {reason}")
