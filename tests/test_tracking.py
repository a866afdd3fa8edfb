"""MLflow tracking against a real SQLite store: resume finds the run, epochs are logged once."""

import base64
import http.server
import os
import subprocess
import sys
import threading
import time
from urllib.parse import quote

import pytest
import torch
from processes import free_port

from ltray.errors import LtrayError
from ltray.tracking import (
    MlflowTracker,
    check_reachable,
    metric_key,
    resolve_tracking_uri,
    use_url_credentials,
)


def test_relative_sqlite_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://h:5000") == "http://h:5000"


def test_unreachable_server_is_named():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LtrayError, match=rf"MLflow server {uri} cannot be reached"):
        check_reachable(uri, timeout_s=2)


def test_unwritable_sqlite_folder_is_named(tmp_path):
    uri = f"sqlite:///{tmp_path}/missing/mlflow.db"
    with pytest.raises(LtrayError, match="missing or not writable"):
        check_reachable(uri)


def test_metric_key_sanitises():
    assert metric_key("val/acc_class/dog:1") == "val/acc_class/dog_1"


def test_resume_continues_run_and_fills_missing_epochs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = MlflowTracker(uri, "exp")
    first.start("job-abc", {"loss.name": "dr", "data.storage_options": "***"}, {"t": "1"})
    first.log_epoch(0, {"val/acc": 10.0})
    # a crash after epoch 1's checkpoint but before its metrics were logged
    history = [{"epoch": 0.0, "val/acc": 10.0}, {"epoch": 1.0, "val/acc": 20.0}]

    again = MlflowTracker(uri, "exp")
    again.start("job-abc", {"loss.name": "dr", "world_size": 2}, {"t": "2"})
    assert again.run_id == first.run_id
    again.fill_missing(history)
    again.log_epoch(2, {"val/acc": 30.0})
    steps = [m.step for m in again.client.get_metric_history(again.run_id, "val/acc")]
    assert sorted(steps) == [0, 1, 2]
    params = again.client.get_run(again.run_id).data.params
    assert params["world_size"] == "2" and params["loss.name"] == "dr"

    fresh = MlflowTracker(uri, "exp")
    fresh.start("job-abc", {}, {}, fresh=True)
    assert fresh.run_id != first.run_id


def test_an_epoch_already_logged_is_not_logged_again(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = MlflowTracker(uri, "exp")
    first.start("job-abc", {}, {})
    first.log_epoch(0, {"val/acc": 10.0})
    # the checkpoint of epoch 0 never registered: the rerun trains epoch 0 again
    again = MlflowTracker(uri, "exp")
    again.start("job-abc", {}, {})
    again.log_epoch(0, {"val/acc": 10.5})
    again.log_epoch(1, {"val/acc": 20.0})
    history = again.client.get_metric_history(again.run_id, "val/acc")
    assert sorted((m.step, m.value) for m in history) == [(0, 10.0), (1, 20.0)]


class _HealthNeedsBasicAuth(http.server.BaseHTTPRequestHandler):
    expected = "Basic " + base64.b64encode(b"alice:p@ss/w+rd").decode()

    def do_GET(self):
        ok = self.path == "/health" and self.headers.get("Authorization") == self.expected
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthNeedsBasicAuth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_server_uri_credentials_are_sent_as_basic_auth(health_server):
    check_reachable(f"http://alice:{quote('p@ss/w+rd', safe='')}@{health_server}", timeout_s=5)


def test_wrong_server_credentials_are_named_without_the_password(health_server):
    uri = f"http://alice:wrong-pw@{health_server}"
    with pytest.raises(LtrayError) as info:
        check_reachable(uri, timeout_s=5)
    assert str(info.value) == f"MLflow server http://***@{health_server} answered 401 on /health"


def test_mlflow_gets_the_uri_without_credentials_and_them_through_its_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert use_url_credentials("http://alice:p%40ss@h:5000/m") == "http://h:5000/m"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    assert use_url_credentials("sqlite:////x/mlflow.db") == "sqlite:////x/mlflow.db"


def test_final_metrics_and_model_are_logged_once_by_any_attempt(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    built = []

    def model():
        built.append(1)
        raise RuntimeError("simulated crash while logging the model")

    first = MlflowTracker(uri, "exp")
    first.start("job-abc", {}, {})
    with pytest.raises(RuntimeError, match="simulated"):
        first.log_final(3, {"test/acc": 50.0}, model)
    # the rerun recomputes the same final metrics: they are not logged again, the model is
    again = MlflowTracker(uri, "exp")
    again.start("job-abc", {}, {})
    example = torch.zeros(2, 3)
    contract = {"classes": ["a", "b"]}
    linear = torch.nn.Linear(3, 2).eval()
    again.log_final(3, {"test/acc": 50.0}, lambda: (linear, example.numpy(), contract))
    again.log_final(3, {"test/acc": 50.0}, lambda: built.append(2))
    history = again.client.get_metric_history(again.run_id, "test/acc")
    assert [(m.step, m.value) for m in history] == [(3, 50.0)]
    assert built == [1]
    run = again.client.get_run(again.run_id)
    assert run.data.tags["ltray.final_logged"] == "model"
    assert {a.path for a in again.client.list_artifacts(again.run_id)} >= {"final_metrics.json"}


def test_a_data_set_logged_by_two_runs_at_once_is_logged_after_the_collision(tmp_path):
    """MLflow checks for the experiment's row of a data set, then inserts it: a sweep's trials
    logging the same data set at once collide on its key (an integrity error for the later
    one), which a second try resolves; any other error is not retried."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "exp")
    tracker.start("job-abc", {}, {})
    calls, log_inputs = [], tracker.client.log_inputs

    def collide_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            cause = Exception("UNIQUE constraint failed: datasets.experiment_id, datasets.name")
            raise sqlalchemy.exc.IntegrityError("INSERT INTO datasets ...", {}, cause)
        return log_inputs(*args, **kwargs)

    tracker.client.log_inputs = collide_once
    tracker.log_dataset(str(tmp_path), "tiny", "f" * 64)
    (logged,) = tracker.client.get_run(tracker.run_id).inputs.dataset_inputs
    assert len(calls) == 2 and logged.dataset.name == "tiny"

    other = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "exp")
    other.start("job-def", {}, {})
    other.client.log_inputs = lambda *a, **k: (_ for _ in ()).throw(MlflowException("boom"))
    with pytest.raises(MlflowException, match="boom"):
        other.log_dataset(str(tmp_path), "tiny", "f" * 64)


START_ON_SIGNAL = """
import pathlib, sys, time
from ltray.tracking import MlflowTracker
folder = pathlib.Path(sys.argv[1])
(folder / f"ready-{sys.argv[2]}").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
tracker = MlflowTracker(f"sqlite:///{folder}/mlflow.db", "exp")
tracker.start(f"job-{sys.argv[2]}", {}, {})
tracker.finish()
"""


@pytest.mark.slow
def test_runs_started_at_once_on_a_new_sqlite_file_all_start(tmp_path):
    """MLflow creates a SQLite store's tables on first use; without ltray's lock, processes
    doing that at once fail ("duplicate column name: step", "table runs already exists"): two of
    three did in every try before the lock."""
    starts = [
        subprocess.Popen([sys.executable, "-c", START_ON_SIGNAL, str(tmp_path), str(i)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(3)
    ]  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [start.communicate(timeout=120)[0] for start in starts]
    assert [start.returncode for start in starts] == [0, 0, 0], outputs
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "exp")
    experiment = tracker.client.get_experiment_by_name("exp").experiment_id
    names = {run.info.run_name for run in tracker.client.search_runs([experiment])}
    assert names == {"job-0", "job-1", "job-2"}


def test_an_experiment_made_by_another_process_meanwhile_is_used(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker, other = MlflowTracker(uri, "exp"), MlflowTracker(uri, "exp")
    lookup = tracker.client.get_experiment_by_name
    lookups = []

    def made_after_the_first_lookup(name):
        lookups.append(name)
        if len(lookups) == 1:
            other.client.create_experiment(name)
            return None
        return lookup(name)

    tracker.client.get_experiment_by_name = made_after_the_first_lookup
    tracker.start("job-abc", {}, {})
    assert len(lookups) == 2
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.experiment_id == lookup("exp").experiment_id


def test_a_database_error_is_told_by_its_first_line():
    import sqlalchemy.exc

    from ltray.train.launcher import _root_cause

    cause = Exception("UNIQUE constraint failed: datasets.experiment_id")
    error = sqlalchemy.exc.IntegrityError("INSERT INTO datasets (a) VALUES (?)", {"a": 1}, cause)
    wrapped = RuntimeError("the worker failed")
    wrapped.__cause__ = error
    assert _root_cause(wrapped) == f"(builtins.Exception) {cause}"
    assert _root_cause(ValueError("Traceback...\n  File x\nValueError: bad")) == "ValueError: bad"
