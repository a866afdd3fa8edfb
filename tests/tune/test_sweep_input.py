"""Every bad sweep is refused with one line before any trial starts (and before Ray does), and
the pieces of a sweep that are plain logic: names, overrides, the grid, what Tune sees."""

from __future__ import annotations

import pytest
import yaml
from sweep_support import tiny_job, write_sweep
from typer.testing import CliRunner

from ltray.cli import app
from ltray.tune.search import EPOCHS_DONE, EpochASHA, num_samples
from ltray.tune.sweep_config import load_sweep, split_overrides


def refused(tmp_path, sweep_file, *extra: str) -> str:
    """``ltray tune`` fails with one ``error:`` line, and no sweep folder was made."""
    result = CliRunner().invoke(app, ["tune", str(sweep_file), *extra])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    return errors[0]


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"serach": {"trials": 2}}, "serach: unknown key"),
        ({"space": {"loss.margin": {"unifrom": [0, 1]}}}, "space.loss.margin.unifrom: unknown key"),
        ({"space": {"loss.margin": {"uniform": [0.5, 0.1]}}}, "low must be below high"),
        ({"space": {"loss.margn": {"uniform": [0, 0.5]}}}, "the job has no such key"),
        ({"space": {"loss.margin": {"uniform": [0.0, 2.0]}}}, "value 2.0 is refused by the job"),
        ({"space": {"storage.url": {"choice": ["a", "b"]}}}, "cannot be searched"),
        (
            {"space": {"loss.margin": {"grid": [0.1, 0.2]}}},
            "a grid domain needs search.algorithm grid",
        ),
        (
            {"search": {"algorithm": "grid", "trials": 2}},
            "grid needs a grid domain for every key",
        ),
        (
            {
                "space": {"loss.margin": {"grid": [0.1, 0.2, 0.3]}},
                "search": {"algorithm": "grid", "trials": 4},
            },
            "not a multiple of the grid's 3 points",
        ),
        ({"scheduler": {"kind": "asha", "grace_epochs": 5}}, "exceeds the job's schedule.epochs"),
        ({"metric": {"name": "test/acc"}}, "selects on the val split only"),
        ({"metric": {"name": "val/acc_rare"}}, "training does not report it"),
    ],
)
def test_a_bad_sweep_is_refused_with_one_line(tmp_path, sweep_data, sections, expected):
    error = refused(tmp_path, write_sweep(tmp_path, sweep_data, **sections))
    assert expected in error


def test_a_sweep_over_a_data_set_without_val_is_refused(tmp_path, data_without_val):
    error = refused(tmp_path, write_sweep(tmp_path, data_without_val))
    assert "has no 'val' split to select on" in error and "--val-per-class" in error


def test_a_missing_base_job_and_a_bad_override_are_refused(tmp_path, sweep_data):
    sweep_file = write_sweep(tmp_path, sweep_data, base=str(tmp_path / "nowhere.yaml"))
    assert "nowhere.yaml not found" in refused(tmp_path, sweep_file)
    sweep_file = write_sweep(tmp_path, sweep_data)
    error = refused(tmp_path, sweep_file, "--set", "optim.lr=-1")
    assert "optim.lr" in error


def test_set_reaches_the_sweep_or_its_base_job(tmp_path, sweep_data):
    assert split_overrides(["search.trials=2", "schedule.epochs=1", "scaling.num_workers=2"]) == (
        ["search.trials=2", "scaling.num_workers=2"],
        ["schedule.epochs=1"],
    )
    sweep = load_sweep(
        write_sweep(tmp_path, sweep_data), ["search.trials=2", "optim.lr=0.2", "scaling={}"]
    )
    assert sweep.config.search.trials == 2 and sweep.base.optim.lr == 0.2


def test_the_sweep_name_follows_what_shapes_it(tmp_path, sweep_data, monkeypatch):
    from ltray.tune.sweep import with_absolute_paths

    sweep_file = write_sweep(tmp_path, sweep_data)
    name = with_absolute_paths(load_sweep(sweep_file)).run_name
    assert name.startswith("tiny-")
    # the same sweep from another folder, with the data set spelled relative to it
    monkeypatch.chdir(tmp_path)
    relative = tiny_job("../" + sweep_data.rsplit("/", 2)[-2] + "/with-val", tmp_path)
    same = write_sweep(tmp_path, sweep_data, job=relative)
    assert with_absolute_paths(load_sweep(same)).run_name == name
    # how many at a time does not change the sweep; a wider space, another seed do
    again = with_absolute_paths(load_sweep(sweep_file, ["max_concurrent_trials=1"]))
    assert again.run_name == name
    for change in ("search.seed=3", "scheduler.grace_epochs=2", "metric.mode=min", "optim.lr=0.2"):
        assert with_absolute_paths(load_sweep(sweep_file, [change])).run_name != name


def test_a_grid_runs_every_point_trials_over_points_times(tmp_path, sweep_data):
    sweep = load_sweep(
        write_sweep(
            tmp_path,
            sweep_data,
            space={
                "loss.margin": {"grid": [0.1, 0.2]},
                "loss.uniformity.kind": {"grid": ["mhe_s1", "mhe_s2", "gaussian"]},
            },
            search={"algorithm": "grid", "trials": 12},
        )
    )
    assert sweep.grid_points == 6 and num_samples(sweep) == 2


def test_a_trials_job_is_the_base_job_with_its_values(tmp_path, sweep_data):
    sweep = load_sweep(write_sweep(tmp_path, sweep_data))
    raw = sweep.trial_raw({"loss.margin": 0.3, "loss.uniformity.weight": 0.05})
    assert raw["loss"]["margin"] == 0.3 and raw["loss"]["uniformity"] == {"weight": 0.05}
    assert raw["optim"] == yaml.safe_load((tmp_path / "job.yaml").read_text())["optim"]


def test_asha_never_stops_a_trial_at_its_last_epoch():
    """Tune's ASHA stops a trial reaching max_t, killing its final evaluation; ltray's lets the
    run end by itself, and still stops a trial below the cut at a rung."""

    class Trial:
        def __init__(self, trial_id: str) -> None:
            self.trial_id = trial_id

    scheduler = EpochASHA(
        time_attr=EPOCHS_DONE, metric="m", mode="max", max_t=3, grace_period=1, reduction_factor=2
    )
    good, bad, late = Trial("good"), Trial("bad"), Trial("late")
    for trial in (good, bad, late):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, good, {EPOCHS_DONE: 1, "m": 0.9}) == "CONTINUE"
    assert scheduler.on_trial_result(None, bad, {EPOCHS_DONE: 1, "m": 0.1}) == "STOP"
    assert scheduler.on_trial_result(None, late, {EPOCHS_DONE: 3, "m": 0.0}) == "CONTINUE"


def test_tune_hears_only_of_evaluated_epochs():
    from ltray.tune.driver import EpochReports

    class Queue:
        def __init__(self) -> None:
            self.items: list[dict] = []

        def put(self, item: dict) -> None:
            self.items.append(item)

    reports = EpochReports.__new__(EpochReports)  # outside Tune: its queue by hand
    reports.metric = "val/acc_balanced"
    reports._training_actor_item_queue = queue = Queue()
    reports.after_report(None, [{"stream/epoch": 1.0, "stream/batch": 4.0}], None)  # mid-epoch
    reports.after_report(None, [{"epoch": 0.0, "train/loss_total": 1.0}], None)  # not evaluated
    reports.after_report(None, [{"test/acc": 50.0}], None)  # the final report: test metrics
    reports.after_report(None, [{"epoch": 1.0, "val/acc_balanced": 40.0}], None)
    assert queue.items == [{"epoch": 1.0, "val/acc_balanced": 40.0, EPOCHS_DONE: 2}]
