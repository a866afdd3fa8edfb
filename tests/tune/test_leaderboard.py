"""The leaderboard: ranking, the best trial (one that trained every epoch), its job file."""

from __future__ import annotations

import yaml
from sweep_support import write_sweep

from ltray.config import validate_job
from ltray.tune.leaderboard import (
    ERROR,
    FINISHED,
    STOPPED,
    TrialRow,
    best_job_yaml,
    best_row,
    figure,
    rank,
    table,
)
from ltray.tune.sweep_config import load_sweep


def row(trial: str, value: float | None, status: str, margin: float = 0.1) -> TrialRow:
    epochs = {FINISHED: 3, STOPPED: 1, ERROR: 0}[status]
    return TrialRow(trial, {"loss.margin": margin}, value, epochs, status)


def test_the_best_trial_trained_every_epoch():
    rows = rank([row("a", 70.0, STOPPED), row("b", 60.0, FINISHED), row("c", None, ERROR)], "max")
    assert [r.trial_id for r in rows] == ["a", "b", "c"]  # ranked on the metric, errors last
    assert best_row(rows).trial_id == "b"  # not the one judged on one epoch
    assert best_row([row("a", 70.0, STOPPED)]).trial_id == "a"  # unless none finished
    assert [r.trial_id for r in rank(rows, "min")] == ["b", "a", "c"]


def test_the_table_and_the_promoted_job(tmp_path, sweep_data):
    sweep = load_sweep(write_sweep(tmp_path, sweep_data))
    rows = [row("x_00001", 61.5, FINISHED, 0.25), row("x_00000", 40.0, STOPPED, 0.4)]
    text = table(sweep, rows)
    assert text.splitlines()[0].split() == [
        "trial", "loss.margin", "loss.uniformity.weight", "loss.norm.weight",
        "val/acc_balanced", "epochs", "status",
    ]  # fmt: skip
    assert "61.50" in text and "3/3" in text and "stopped early" in text
    assert table(sweep, rows, markdown=True).startswith("| trial | loss.margin")
    promoted = best_job_yaml(sweep, rows[0], "tiny-0123abcd")
    assert promoted.startswith("# promoted from sweep tiny-0123abcd, trial x_00001")
    job = validate_job(yaml.safe_load(promoted))
    assert job.loss.margin == 0.25 and job.schedule.epochs == 3
    figure(sweep, rows, tmp_path / "f.png", "tiny-0123abcd")
    assert (tmp_path / "f.png").stat().st_size > 5000


def test_a_sweep_is_complete_when_every_trial_has_ended(tmp_path, sweep_data):
    from ltray.tune.leaderboard import UNFINISHED, is_complete

    sweep = load_sweep(write_sweep(tmp_path, sweep_data, search={"trials": 3}))
    ended = [row("a", 1.0, FINISHED), row("b", 2.0, STOPPED), row("c", None, ERROR)]
    assert is_complete(sweep, ended)
    assert not is_complete(sweep, ended[:2])  # Ctrl-C before the third trial was created
    interrupted = TrialRow("c", {}, None, 1, UNFINISHED)
    assert not is_complete(sweep, [*ended[:2], interrupted])
