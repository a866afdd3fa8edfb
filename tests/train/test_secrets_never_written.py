"""A job with a distinct secret in every URL and in its storage options, run as a user runs it
(``ltray train job.yaml`` on its own local Ray), against a real S3-compatible server and a real
``mlflow server`` behind basic auth: the run succeeds, and no secret appears in anything it wrote.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote, quote_plus

import mlflow
import pytest
import yaml
from file_search import files_holding, names_held
from processes import COMMAND_TIMEOUT_S, ltray_executable
from processes import mlflow_server as start_mlflow_server
from train_support import make_job

from ltray.train.checkpoint import CHECKPOINT_FILE

pytestmark = pytest.mark.slow


BUCKET = "ltray-secrets"
TRACKING_USER = "mlflow-user"
TRACKING_SECRET = "trk-pw-5d1c0e/+@9"  # percent-encoded in the URL, as RFC 3986 wants
DATA_URL_KEY, DATA_URL_SECRET = "DATAURLKEY7Q2W", "data-url-secret-4a7b/2c"
DATA_OPTION_SECRET = "data-option-token-8e3f"
STORAGE_URL_KEY, STORAGE_URL_SECRET = "RUNSURLKEY3K9P", "runs-url-secret-1f6d"
STORAGE_OPTION_KEY, STORAGE_OPTION_SECRET = "RUNSOPTKEY5M2X", "runs-option-secret-7c0a"
SECRETS = [
    TRACKING_SECRET,
    DATA_URL_KEY,
    DATA_URL_SECRET,
    DATA_OPTION_SECRET,
    STORAGE_URL_KEY,
    STORAGE_URL_SECRET,
    STORAGE_OPTION_KEY,
    STORAGE_OPTION_SECRET,
]
BASIC_AUTH = "Basic " + base64.b64encode(f"{TRACKING_USER}:{TRACKING_SECRET}".encode()).decode()


def spellings(secret: str) -> list[bytes]:
    """A secret as written, percent-encoded, and inside a basic-auth header."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    if secret == TRACKING_SECRET:
        forms.add(BASIC_AUTH.split()[1])
    return [form.encode() for form in forms]


NEEDLES = {secret: spellings(secret) for secret in SECRETS}


def leaks(data: bytes) -> list[str]:
    return names_held(data, NEEDLES)


class _AuthProxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the MLflow server only requests that carry the basic-auth credentials."""

    upstream_port = 0
    authorized = 0

    def _forward(self) -> None:
        if self.headers.get("Authorization") != BASIC_AUTH:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        type(self).authorized += 1
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        upstream.request(self.command, self.path, body=body, headers=headers)
        reply = upstream.getresponse()
        payload = reply.read()
        self.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        upstream.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def mlflow_behind_basic_auth(tmp_path):
    """(URI of an authenticating proxy, URI of the server, the server's folder)."""
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    with start_mlflow_server(folder) as (server_uri, port):
        handler = type("Proxy", (_AuthProxy,), {"upstream_port": port, "authorized": 0})
        proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        try:
            yield handler, f"127.0.0.1:{proxy.server_address[1]}", server_uri, folder
        finally:
            proxy.shutdown()


@pytest.fixture
def ray_temp_dir():
    """Ray's own temp folder for this run (short: Ray's sockets live in it)."""
    folder = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def test_no_secret_is_written_anywhere(
    tiny_data, s3_options, tmp_path, mlflow_behind_basic_auth, ray_temp_dir
):
    from ltray import fs

    proxy, proxy_host, server_uri, server_folder = mlflow_behind_basic_auth
    s3, _ = fs.get_fs(f"s3://{BUCKET}", s3_options)
    if not s3.exists(BUCKET):
        s3.mkdir(BUCKET)
    s3.put(tiny_data, f"{BUCKET}/data/tiny", recursive=True)
    endpoint = {"client_kwargs": s3_options["client_kwargs"]}
    # moto accepts any credentials: the data set is read with its URL's key and secret (and
    # the option's session token), checkpoints with the storage options, which win over the
    # storage URL's
    job = make_job(
        f"s3://{DATA_URL_KEY}:{DATA_URL_SECRET}@{BUCKET}/data/tiny",
        tmp_path,
        name="secret-job",
        data={"storage_options": {**endpoint, "token": DATA_OPTION_SECRET}},
        storage={
            "url": f"s3://{STORAGE_URL_KEY}:{STORAGE_URL_SECRET}@{BUCKET}/runs",
            "storage_options": {
                **endpoint,
                "key": STORAGE_OPTION_KEY,
                "secret": STORAGE_OPTION_SECRET,
            },
        },
        tracking={
            "uri": f"http://{TRACKING_USER}:{quote(TRACKING_SECRET, safe='')}@{proxy_host}",
            "experiment": "secrets",
        },
        scaling={"num_workers": 2},
        schedule={"epochs": 1, "max_steps_per_epoch": 2},
    )
    job_file = tmp_path / "job" / "job.yaml"  # the user's own file: the one place they belong
    job_file.parent.mkdir()
    job_file.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    assert leaks(job_file.read_bytes()) == SECRETS, "the search must find each as written"
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    # Ray Train's record of the run (the state its dashboard shows, train_loop_config and
    # all) is exported to the session's log folder too, and so searched with the rest
    env.update(
        RAY_TMPDIR=str(ray_temp_dir),
        RAY_TRAIN_ENABLE_STATE_TRACKING="1",
        RAY_enable_export_api_write="1",
    )
    done = subprocess.run(
        [ltray_executable(), "train", str(job_file)],
        env=env,
        capture_output=True,
        timeout=COMMAND_TIMEOUT_S,
        cwd=workdir,
    )
    output = done.stdout + b"\n" + done.stderr
    assert done.returncode == 0, output.decode(errors="replace")[-4000:]
    assert proxy.authorized > 0, "the run never logged through the authenticating proxy"

    # the run is there, logged through basic auth, with its metrics, artifacts and model
    client = mlflow.MlflowClient(server_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
    assert run.data.tags["ltray.dataset"] == f"s3://{BUCKET}/data/tiny"
    assert run.data.params["data.url"] == f"s3://***@{BUCKET}/data/tiny"
    artifacts = server_folder / "artifacts"
    assert any(p.name == "MLmodel" for p in artifacts.rglob("*"))
    assert any(p.name == "final_metrics.json" for p in artifacts.rglob("*"))
    checkpoints = tmp_path / "checkpoints"
    s3.get(f"{BUCKET}/runs", str(checkpoints), recursive=True)
    assert any(checkpoints.rglob(CHECKPOINT_FILE)), "no checkpoint to search"
    logs = list((ray_temp_dir / "ray").glob("session_*/logs"))
    (train_runs,) = logs[0].rglob("export_events/event_EXPORT_TRAIN_STATE.log")
    assert b"secret-job" in train_runs.read_bytes(), "Ray's record of the run is not searched"
    assert b"secret-job" in output

    found = {}
    for folder in (server_folder, checkpoints, ray_temp_dir, workdir):  # workdir: the user's
        found |= files_holding(folder, NEEDLES)
    if leaks(output):
        found["ltray train stdout+stderr"] = leaks(output)
    record = "\n".join(map(str, (run.info, run.data.params, run.data.tags))).encode()
    if leaks(record):
        found["the MLflow run as MLflow returns it"] = leaks(record)
    assert not found, f"secrets written: {found}"
