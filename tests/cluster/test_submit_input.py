"""``ltray submit`` refuses bad input before anything is uploaded, each with one line; what it
would upload is what Ray uploads. No cluster here: the address is a port nobody listens on, so a
check that came after the connection would fail with the connection's line instead."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from processes import free_port
from typer.testing import CliRunner

from ltray.cli import app
from ltray.cluster.runtime_env import Upload, check_upload_size, upload_files
from ltray.cluster.submission import (
    load_submission,
    refuse_duplicate,
    submission_id,
)
from ltray.errors import LtrayError

REPO = Path(__file__).resolve().parents[2]
NOBODY = f"http://127.0.0.1:{free_port()}"


def job_dict(**sections) -> dict:
    raw = {
        "name": "t",
        "data": {"url": "s3://bucket/data"},
        "storage": {"url": "s3://bucket/runs"},
        "tracking": {"uri": "http://mlflow:5000"},
        "submit": {"runtime_env": {"working_dir": "."}},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (the cwd) with jobs/job.yaml; returns a writer of that file."""
    (tmp_path / "jobs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)

    def write(raw: dict, name: str = "jobs/job.yaml") -> str:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(yaml.safe_dump(raw))
        return name

    return write


def submit(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["submit", *args])
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def test_a_reachable_check_comes_after_the_file_checks(project):
    """The control for every refusal below: a valid job gets as far as the connection."""
    code, output = submit(project(job_dict()), "--address", NOBODY)
    assert code == 1
    assert "cannot reach the Ray dashboard at http://127.0.0.1:" in one_error_line(output)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"optim": {"lrr": 0.1}}, r"optim\.lrr: unknown key \(did you mean 'lr'\?\)"),
        ({"submit": {"runtime_env": {"working_dri": "."}}}, r"did you mean 'working_dir'"),
        (
            {"submit": {"runtime_env": {"pip": ["x"], "image_uri": "img:1"}}},
            "give pip or image_uri, not both",
        ),
        (
            {"data": {"url": "./data/set"}},
            r"data\.url \./data/set is a relative path: on the cluster it would point into",
        ),
        ({"storage": {"url": "runs"}}, r"storage\.url runs is a relative path"),
        ({"tracking": {"uri": "sqlite:///mlflow.db"}}, r"tracking\.uri mlflow\.db is a relative"),
        ({"storage": {"url": "memory://runs"}}, "memory:// lives in one process only"),
        (
            {"data": {"storage_options": {"secret": "s3cr3t-value"}}},
            r"data\.storage_options holds a credential, and the file would be uploaded",
        ),
        (
            {"data": {"url": "s3://AKIAXXXX:s3cr3t-value@bucket/data"}},
            r"data\.url holds a credential",
        ),
        (
            {"submit": {"runtime_env": {"env_vars": {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}}}},
            r"submit\.runtime_env\.env_vars\.AWS_SECRET_ACCESS_KEY holds a credential",
        ),
        (
            {"submit": {"runtime_env": {"working_dir": "nowhere"}}},
            r"working_dir .*nowhere is not a folder",
        ),
    ],
)
def test_bad_job_files_are_refused_before_connecting(project, change, expected):
    code, output = submit(project(job_dict(**change)), "--address", NOBODY)
    assert code == 1
    line = one_error_line(output)
    assert re.search(expected, line), line
    assert "s3cr3t-value" not in output
    assert "uploading" not in output


def test_a_credential_in_set_is_refused(project):
    name = project(job_dict())
    code, output = submit(name, "--address", NOBODY, "--set", "data.storage_options.key=AKIA1")
    assert code == 1
    assert "--set data.storage_options.key: a credential would be stored" in one_error_line(output)
    assert "AKIA1" not in output


def test_the_job_file_must_be_inside_the_working_dir_and_uploaded(project, tmp_path):
    raw = job_dict(submit={"runtime_env": {"working_dir": "jobs"}})
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(yaml.safe_dump(raw))
    code, output = submit(str(outside), "--address", NOBODY)
    assert code == 1 and "is outside the working_dir" in one_error_line(output)

    excluded = job_dict(submit={"runtime_env": {"excludes": ["jobs/"]}})
    code, output = submit(project(excluded), "--address", NOBODY)
    assert code == 1
    assert "is left out of the upload by submit.runtime_env.excludes" in one_error_line(output)


def test_a_working_dir_over_rays_limit_names_its_largest_files(project, tmp_path):
    name = project(job_dict(submit={"runtime_env": {"excludes": []}}))
    (tmp_path / "weights").mkdir()
    with open(tmp_path / "weights" / "big.pt", "wb") as f:  # sparse: costs no disk
        f.truncate(600 * 2**20)
    (tmp_path / "small.txt").write_text("x")
    code, output = submit(name, "--address", NOBODY)
    assert code == 1
    line = one_error_line(output)
    assert "over Ray's limit of 512.0 MiB; the largest: weights/big.pt (600.0 MiB)" in line
    # once excluded, the job gets as far as the connection
    raw = job_dict(submit={"runtime_env": {"excludes": ["weights/"]}})
    code, output = submit(project(raw), "--address", NOBODY)
    assert "cannot reach the Ray dashboard" in one_error_line(output)


def test_size_check_counts_what_is_uploaded():
    upload = Upload(Path("/p"), [("a", 3), ("b", 4)])
    check_upload_size(upload, limit=8)
    with pytest.raises(LtrayError, match=r"the largest: b \(0\.0 MiB\), a \(0\.0 MiB\)"):
        check_upload_size(upload, limit=7)


def test_upload_files_are_the_files_ray_packs(tmp_path):
    """The same tree walked by ltray and by Ray's packaging (excludes, a .gitignore at the top,
    a .rayignore in a subfolder, a negation): the same files."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    tree = {
        "a.py": "x",
        "data/shard.parquet": "x",
        "src/keep.py": "x",
        "src/skip.log": "x",
        "src/sub/.rayignore": "*.tmp\n",
        "src/sub/t.tmp": "x",
        "src/sub/t.py": "x",
        "runs/ckpt/model.pt": "x",
        "notes/important.log": "x",
        ".gitignore": "*.log\n!important.log\nruns/\n",
    }
    for name, text in tree.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    excludes = ["data/", "*.parquet"]

    ray_files = []

    def handler(path: Path) -> None:
        if path.is_file():
            ray_files.append(path.relative_to(tmp_path).as_posix())

    _dir_travel(tmp_path, [_get_excludes(tmp_path, excludes)], handler, include_gitignore=True)
    ours = [path for path, _ in upload_files(tmp_path, excludes).files]
    assert sorted(ours) == sorted(ray_files)
    assert "src/keep.py" in ours and "notes/important.log" in ours
    assert not {"src/skip.log", "src/sub/t.tmp", "runs/ckpt/model.pt"} & set(ours)


def test_the_entrypoint_and_id_come_from_the_run(project):
    name = project(job_dict())
    first = load_submission(Path(name), ["loss.margin=0.3"])
    assert first.entrypoint() == "ltray train jobs/job.yaml --set loss.margin=0.3"
    assert submission_id(first.key, 1) == f"ltray-{first.key}"
    assert submission_id(first.key, 3) == f"ltray-{first.key}-3"
    # where it is submitted from and how: the same run, the same id
    moved = job_dict(submit={"metadata": {"team": "vision"}, "entrypoint_num_cpus": 1})
    assert load_submission(Path(project(moved)), ["loss.margin=0.3"]).key == first.key
    assert load_submission(Path(name), ["loss.margin=0.2"]).key != first.key


def test_a_sweep_file_is_submitted_as_ltray_tune(project):
    project(job_dict(data={"url": "s3://bucket/data"}))
    sweep = {
        "base": "jobs/job.yaml",
        "space": {"loss.margin": {"uniform": [0.0, 0.5]}},
        "search": {"algorithm": "random", "trials": 2},
        "scheduler": {"kind": "none"},
    }
    name = project(sweep, "jobs/sweeps/s.yaml")
    submission = load_submission(Path(name), ["search.trials=4"])
    assert submission.kind == "tune"
    assert submission.entrypoint() == "ltray tune jobs/sweeps/s.yaml --set search.trials=4"
    assert [str(p) for p in submission.config_files] == [name, "jobs/job.yaml"]


class Attempt:
    def __init__(self, status: str, sid: str = "ltray-t-1", start_time: int = 0) -> None:
        self.status, self.submission_id, self.start_time = status, sid, start_time


@pytest.mark.parametrize(
    ("status", "resubmit", "expected"),
    [
        ("RUNNING", False, "is already running on U as ltray-t-1"),
        ("PENDING", True, "is already pending on U as ltray-t-1"),
        ("SUCCEEDED", True, "already finished on U as ltray-t-1"),
        ("FAILED", False, "failed on U as ltray-t-1: pass --resubmit"),
        ("STOPPED", False, "stopped on U as ltray-t-1: pass --resubmit"),
        ("FAILED", True, None),
        ("STOPPED", True, None),
    ],
)
def test_a_second_submit_of_the_same_run(project, status, resubmit, expected):
    submission = load_submission(Path(project(job_dict())), [])
    if expected is None:
        refuse_duplicate(submission, [Attempt(status)], resubmit, "U")
        return
    with pytest.raises(LtrayError, match=re.escape(expected)):
        refuse_duplicate(submission, [Attempt(status)], resubmit, "U")


def test_no_address_says_how_to_give_one(project):
    code, output = submit(project(job_dict()))
    assert code == 1
    assert "no cluster address: pass --address http://HEAD:8265" in one_error_line(output)


@pytest.mark.parametrize("name", ["jobs/inat18.yaml", "jobs/imagenet_lt.yaml", "jobs/demo.yaml"])
def test_the_shipped_job_files_pass_the_checks_before_the_connection(name, monkeypatch):
    """From the repository's root, as the README says. inat18 reads object storage as it is;
    the others name local paths, to --set for a cluster (as the README's cluster section does),
    and are refused without."""
    from ltray.cluster.submission import (
        check_no_credentials_travel,
        check_paths_reach_the_cluster,
        check_upload,
    )

    monkeypatch.chdir(REPO)
    sets = [] if name == "jobs/inat18.yaml" else ["data.url=s3://b/d", "storage.url=s3://b/r"]
    if name == "jobs/demo.yaml":
        sets.append("tracking.uri=http://mlflow:5000")
    submission = load_submission(Path(name), sets)
    check_no_credentials_travel(submission)
    notes = check_paths_reach_the_cluster(submission.job, name)
    check_upload(submission)
    assert submission.entrypoint().startswith(f"ltray train {name}")
    # inat18 and imagenet_lt take their MLflow URI from the nodes' environment: said in a note
    assert bool(notes) == (name != "jobs/demo.yaml")
    if not sets:
        return
    with pytest.raises(LtrayError, match="is a relative path"):
        check_paths_reach_the_cluster(load_submission(Path(name), []).job, name)


def test_the_address_and_the_token_come_from_where_ray_takes_them(monkeypatch, tmp_path):
    from ltray.cluster.connection import dashboard_url, find_token

    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dashboard_url("head:8265") == "http://head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")  # the GCS, not the job API: not taken
    with pytest.raises(LtrayError, match="no cluster address"):
        dashboard_url(None)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://head:8265/")
    assert dashboard_url(None) == "https://head:8265"
    with pytest.raises(LtrayError, match="a Ray Client address"):
        dashboard_url("ray://head:10001")

    assert find_token().value is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-file\n")
    assert (find_token().value, find_token().source) == ("from-file", "~/.ray/auth_token")
    named = tmp_path / "token"
    named.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert find_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert find_token().source == "RAY_AUTH_TOKEN" and find_token().value == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert find_token().value is None
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(
        LtrayError, match="RAY_AUTH_TOKEN_PATH names .*missing, which cannot be read"
    ):
        find_token()


def test_a_fit_runs_from_a_folder_that_stays_in_a_submitted_job(tmp_path, monkeypatch):
    """Ray replaces a submitted job's unpacked working_dir while the driver runs in it (Ray
    issue 52343): inside steady_cwd the current folder survives that, and afterwards it is the
    fresh copy; anywhere else steady_cwd changes nothing."""
    import shutil

    from ltray.train.launcher import steady_cwd

    copy = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    with steady_cwd():
        shutil.rmtree(copy)  # what Ray does when the job's next worker sets the env up
        copy.mkdir()
        (copy / "fresh").write_text("x")
        assert os.path.isdir(os.getcwd())
        assert os.path.relpath("a/b", start="a") == "b"  # Tune's bookkeeping, which needs cwd
    assert Path(os.getcwd()) == copy and Path("fresh").exists()

    monkeypatch.chdir(tmp_path)
    with steady_cwd():
        assert Path(os.getcwd()) == tmp_path

    # the control: without steady_cwd, the same replacement leaves no current folder
    monkeypatch.chdir(copy)
    shutil.rmtree(copy)
    copy.mkdir()
    with pytest.raises(FileNotFoundError):
        os.getcwd()
