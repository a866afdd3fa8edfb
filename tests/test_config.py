"""The job file: every YAML under jobs/ loads; bad keys and values are errors naming the key."""

from pathlib import Path

import pytest

from ltray.config import JobConfig, apply_overrides, load_job, validate_job
from ltray.errors import LtrayError

REPO = Path(__file__).resolve().parents[1]
JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))
SWEEP_FILES = sorted((REPO / "jobs" / "sweeps").glob("*.yaml"))


def minimal(**sections):
    return {"name": "t", "data": {"url": "./d"}, **sections}


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_job_file_loads(path):
    job = load_job(path)
    assert isinstance(job, JobConfig)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_sweep_file_loads(path, monkeypatch):
    """The published sweeps validate against their base jobs (paths are relative to the
    checkout, where they are run from)."""
    from ltray.tune.sweep_config import load_sweep

    monkeypatch.chdir(REPO)
    sweep = load_sweep(path.relative_to(REPO))
    assert sweep.config.metric.name.startswith("val/") and len(sweep.config.space) >= 3


def test_sweep_files_exist():
    names = {p.name for p in SWEEP_FILES}
    assert {"cifar10_lt.yaml", "cifar100_lt.yaml", "imagenet_lt.yaml", "inat18.yaml"} <= names
    assert "tiny.yaml" in names


def test_job_files_exist():
    names = {p.name for p in JOB_FILES}
    assert {"demo.yaml", "cifar10_lt.yaml"} <= names


def test_unknown_key_names_path_and_nearest_key():
    with pytest.raises(LtrayError, match=r"loss\.margn: unknown key \(did you mean 'margin'\?\)"):
        validate_job(minimal(loss={"name": "dr", "margn": 0.3}))


def test_unknown_top_level_section():
    with pytest.raises(LtrayError, match=r"schedul: unknown key \(did you mean 'schedule'\?\)"):
        validate_job(minimal(schedul={}))


def test_unknown_nested_key():
    with pytest.raises(LtrayError, match=r"loss\.uniformity\.wieght: unknown key"):
        validate_job(minimal(loss={"uniformity": {"wieght": 1}}))


def test_out_of_range_value_names_key():
    with pytest.raises(LtrayError, match=r"optim\.lr"):
        validate_job(minimal(optim={"lr": -1}))
    with pytest.raises(LtrayError, match=r"loss\.margin: margin must be in \[0, pi/2\)"):
        validate_job(minimal(loss={"margin": 2.0}))


def test_unknown_loss_name_lists_valid_ones():
    with pytest.raises(LtrayError, match=r"unknown loss 'balanced_sofmax'.*'balanced_softmax'"):
        validate_job(minimal(loss={"name": "balanced_sofmax"}))


def test_missing_required_key():
    with pytest.raises(LtrayError, match=r"data: required key is missing"):
        validate_job({"name": "t"})


def test_set_overrides_with_type_checking(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: t\ndata: {url: ./d}\n")
    job = load_job(path, ["loss.margin=0.3", "schedule.milestones=[10, 20]", "loss.name=dr"])
    assert job.loss.margin == 0.3 and job.schedule.milestones == [10, 20]
    with pytest.raises(LtrayError, match=r"scaling\.num_workers"):
        load_job(path, ["scaling.num_workers=two"])
    with pytest.raises(LtrayError, match=r"expected KEY=VALUE"):
        load_job(path, ["loss.margin"])


@pytest.mark.parametrize(
    "key",
    [
        "data.url=s3://b/x",
        "scaling.num_workers=4",
        "schedule.epochs=3",
        "storage.url=/tmp/r",
        "tracking.uri=none",
    ],
)
def test_design_keys_work_with_set(key, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: t\ndata: {url: ./d}\n")
    job = load_job(path, [key])
    dotted, value = key.split("=")
    section, field = dotted.split(".")
    assert str(getattr(getattr(job, section), field)) == value


def test_set_into_value_is_an_error():
    with pytest.raises(LtrayError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_run_name_is_deterministic_and_ignores_where_it_runs():
    a = validate_job(minimal())
    b = validate_job(minimal(storage={"url": "s3://elsewhere"}, tracking={"uri": "none"}))
    c = validate_job(minimal(loss={"margin": 0.3}))
    assert a.run_name() == b.run_name() != c.run_name()
    assert a.run_name().startswith("t-")


@pytest.mark.parametrize(
    "scaling", [{"precision": "bf16"}, {"precision": "fp32"}, {"num_workers": 2}]
)
def test_run_name_changes_with_what_changes_the_result(scaling):
    base = validate_job(minimal())
    assert validate_job(minimal(scaling=scaling)).run_name() != base.run_name()
    how = {"loader_workers": "auto", "decode": "gpu", "on_device": False}  # same batches
    same = minimal(
        scaling={"max_failures": 0, "cpus_per_worker": 2, "compile": True},
        data={"url": "./d", **how},
    )
    assert validate_job(same).run_name() == base.run_name()


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(LtrayError, match="cannot read job file"):
        load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(LtrayError, match="not valid YAML"):
        load_job(bad)


def test_tracking_uri_defaults_to_mlflows_environment_variable(monkeypatch):
    """As MLflow does: a job without tracking.uri logs to $MLFLOW_TRACKING_URI where it runs
    (a cluster's nodes), else to sqlite:///mlflow.db; a uri in the job wins."""
    raw = {"name": "t", "data": {"url": "s3://b/d"}}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert validate_job(raw).tracking.uri == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert validate_job(raw).tracking.uri == "http://mlflow:5000"
    given = {**raw, "tracking": {"uri": "sqlite:///other.db"}}
    assert validate_job(given).tracking.uri == "sqlite:///other.db"
    # where the runs go is not part of the run's name
    assert validate_job(raw).run_name() == validate_job(given).run_name()
