"""A sweep's credentials stay out of everything it writes: the sweep's folder (Tune's experiment
state and pickles, the trials' runs), the MLflow server's store and artifacts, Ray's session logs,
ltray's log folder and the console."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest
from processes import ltray_executable, mlflow_server
from sweep_support import tiny_job, write_sweep

pytestmark = pytest.mark.slow

PASSWORD = "Sekr3t-sweep-Passw0rd"


def files_holding(folder: Path, needles: list[bytes]) -> list[str]:
    found = []
    for root, _, names in os.walk(folder, followlinks=True):
        for name in names:
            path = Path(root) / name
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(needle in data for needle in needles):
                found.append(str(path))
    return found


def test_a_sweeps_tracking_credentials_are_written_nowhere(sweep_data, tmp_path):
    with mlflow_server(tmp_path / "server") as (uri, _):
        tracked = uri.replace("http://", f"http://alice:{PASSWORD}@")
        job = tiny_job(sweep_data, tmp_path)
        job["schedule"]["epochs"] = 1
        job["tracking"] = {"uri": tracked, "experiment": "secret-sweep"}
        sweep_file = write_sweep(
            tmp_path,
            sweep_data,
            job=job,
            search={"trials": 2, "seed": 0},
            scheduler={"kind": "none"},
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run(
            [ltray_executable(), "tune", str(sweep_file), "--out", str(tmp_path / "best.yaml")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    header = base64.b64encode(f"alice:{PASSWORD}".encode())
    needles = [PASSWORD.encode(), header]
    assert PASSWORD not in output
    logs = Path(re.search(r"\[ltray\] logs: (\S+)", done.stdout)[1])
    assert (logs / "ray").exists()  # Ray's session logs, reached through ltray's log folder
    for folder in (tmp_path / "runs", tmp_path / "server", logs):
        assert not files_holding(folder, needles), folder
    # the promoted job is the user's own job file with the trial's values: it keeps their URI
    assert PASSWORD in (tmp_path / "best.yaml").read_text()
