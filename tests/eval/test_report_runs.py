"""Which runs a report shows and how it groups them, on a real MLflow store (SQLite) holding
runs written here the way training and sweeps write them: finished runs with test metrics,
seeds of one method, a sweep parent with its trials, a run that never finished."""

from __future__ import annotations

import math
import statistics

import mlflow
import pytest

from ltray.analysis import run_report
from ltray.analysis.report_page import markdown, numbers, text_table
from ltray.errors import LtrayError
from ltray.tracking import (
    BEST_TRIAL_TAG,
    PARENT_TAG,
    RUN_NAME_TAG,
    SWEEP_KIND_TAG,
    TRIAL_TAG,
)

ACC = {  # (method, seed) -> test/acc, many, medium, few
    ("ce", 0): (40.0, 80.0, 30.0, 5.0),
    ("ce", 1): (44.5, 82.0, 35.5, 9.0),
    ("dr", 0): (47.25, 78.0, 41.0, 20.0),
}


def log_run(client, experiment_id, name, params, metrics=None, tags=None, status="FINISHED"):
    run = client.create_run(experiment_id, run_name=name, tags={RUN_NAME_TAG: name, **(tags or {})})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key, value in (metrics or {}).items():
        client.log_metric(run.info.run_id, key, value, step=1)
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def test_metrics(acc):
    keys = ("test/acc", "test/acc_many", "test/acc_medium", "test/acc_few")
    return dict(zip(keys, acc, strict=True))


test_metrics.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two CE seeds and one dr run in experiment 'tests', one killed run, and a sweep over dr's
    margin whose best trial (finished, with test metrics) is t2; all in one SQLite file."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("tests")
    fingerprint = {"ltray.dataset.fingerprint": "f" * 64}
    ids = {}
    for (method, seed), acc in ACC.items():
        params = {"loss.name": method, "seed": str(seed), "optim.lr": "0.1", "storage.url": "/x"}
        tags = {"ltray.method": method, **fingerprint}
        ids[method, seed] = log_run(
            client, experiment, f"{method}-{seed}", params, test_metrics(acc), tags
        )
    other = client.create_experiment("other")
    params = {"loss.name": "dr", "seed": "0", "optim.lr": "0.050000001", "storage.url": "/y"}
    tags = {"ltray.method": "dr", **fingerprint}
    ids["dr_lr"] = log_run(client, other, "dr-lr", params, test_metrics(ACC["dr", 0]), tags)
    ids["killed"] = log_run(
        client, experiment, "killed", {"loss.name": "ce", "seed": "5"}, status="KILLED"
    )
    sweeps = client.create_experiment("sweeps")
    parent = log_run(
        client,
        sweeps,
        "demo-sweep-1234abcd",
        {"metric.name": "val/acc_balanced", "search.algorithm": "random"},
        tags={SWEEP_KIND_TAG: "sweep", BEST_TRIAL_TAG: "t2"},
    )
    for trial, margin, acc in (("t1", "0.1", None), ("t2", "0.3", (50.0, 70.0, 50.0, 30.0))):
        log_run(
            client,
            sweeps,
            f"demo-sweep-1234abcd-{trial}",
            {"loss.name": "dr", "seed": "0", "loss.margin": margin},
            test_metrics(acc) if acc else {"val/acc_balanced": 33.0},
            {PARENT_TAG: parent, TRIAL_TAG: trial, "ltray.method": "dr", **fingerprint},
            status="FINISHED" if acc else "KILLED",
        )
    ids["sweep"] = parent
    return uri, client, ids


def test_seeds_of_one_method_are_aggregated_with_the_sample_std(store):
    uri, _, ids = store
    report = run_report.collect(uri, ["tests"])
    assert [m.label for m in report.methods] == ["ce", "dr"]
    ce, dr = report.methods
    assert sorted(r.run_id for r in ce.runs) == sorted([ids["ce", 0], ids["ce", 1]])
    for k, column in enumerate(run_report.COLUMNS):
        values = [ACC["ce", 0][k], ACC["ce", 1][k]]
        mean, std = ce.mean_std(column)
        assert mean == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert std == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), rel=1e-12)
        assert dr.mean_std(column)[0] == ACC["dr", 0][k] and math.isnan(dr.mean_std(column)[1])
    assert ce.cell("all") == "42.25 ± 3.18" and dr.cell("all") == "47.25"
    assert report.notes == ["killed left out: killed"]
    table = text_table(report)
    assert table[0].split() == ["method", "seeds", "All", "Many", "Medium", "Few"]
    assert table[1].split()[:5] == ["ce", "2", "42.25", "±", "3.18"]
    payload = numbers(report)
    assert payload["methods"][1]["all"] == {"mean": 47.25, "std": None}
    assert [r["seed"] for r in payload["methods"][0]["runs"]] == ["0", "1"]


def test_a_sweep_stands_for_its_best_trial(store, tmp_path):
    uri, _, ids = store
    for target in (ids["sweep"], "demo-sweep-1234abcd"):  # its run id or its name
        report = run_report.collect(uri, [target])
        (method,) = report.methods
        (run,) = method.runs
        assert run.name == "demo-sweep-1234abcd-t2" and method.cell("all") == "50.00"
        assert method.label == "dr, best trial (val/acc_balanced) of sweep demo-sweep-1234abcd"
    text = markdown(report, [], tmp_path)
    assert "The best trial (val/acc_balanced) of sweep demo-sweep-1234abcd." in text


def test_methods_sharing_a_loss_are_told_apart_by_what_differs(store):
    uri, _, ids = store
    report = run_report.collect(uri, [ids["dr", 0], "other", "demo-sweep-1234abcd"])
    assert [m.label for m in report.methods] == [
        "dr (optim.lr=0.1)",
        "dr (optim.lr=0.05)",
        "dr, best trial (val/acc_balanced) of sweep demo-sweep-1234abcd",
    ]


def test_a_sweep_without_a_best_trial_is_left_out_with_a_note(store):
    uri, client, ids = store
    client.delete_tag(ids["sweep"], BEST_TRIAL_TAG)
    try:
        report = run_report.collect(uri, ["tests", ids["sweep"]])
        note = "sweep demo-sweep-1234abcd left out: it has chosen no best trial yet"
        assert note in report.notes
        with pytest.raises(LtrayError, match="no finished training run among"):
            run_report.collect(uri, [ids["sweep"]])
    finally:
        client.set_tag(ids["sweep"], BEST_TRIAL_TAG, "t2")


@pytest.mark.parametrize(
    "target, message",
    [
        ("0" * 32, r"'0{32}' is no MLflow run id, run name, sweep or experiment in sqlite:///"),
        ("nothing-here", r"'nothing-here' is no MLflow run id, run name, sweep or experiment"),
        ("killed", r"MLflow run [0-9a-f]{32} \(killed\) has not finished training \(killed\)"),
    ],
)
def test_a_target_that_is_no_finished_run_is_one_clear_error(store, target, message):
    uri, _, _ = store
    with pytest.raises(LtrayError, match=message):
        run_report.collect(uri, [target])


def test_a_store_that_is_not_there_is_named(tmp_path):
    with pytest.raises(LtrayError, match=r"no MLflow store at sqlite:///.*nowhere\.db"):
        run_report.collect(f"sqlite:///{tmp_path}/nowhere.db", ["tests"])
