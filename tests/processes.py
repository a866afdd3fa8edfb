"""Helpers for tests that run real processes: free ports, process trees, waiting."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# The hang guard of a whole ltray command that trains on Ray (the demo, a sweep, a run that
# loses a worker), in seconds. It catches a hang and is no speed target (bench/ measures
# speed): the slowest of these, the demo, took 6-8 minutes on the 2-core machines of
# 2026-11-28/29, whose speed varies about twofold by the hour, and the CI run of commit 795abf6
# stopped it at the 10 minutes it was given then.
COMMAND_TIMEOUT_S = 1200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    out = []
    for pid in pids:
        parent = _parent_of(pid)
        while parent not in (None, 0, 1):
            if parent == root:
                out.append(pid)
                break
            parent = _parent_of(parent)
    return out


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def python_json(code: str, *args: str, env=None, cwd=None, timeout: float = 300) -> object:
    """What a fresh Python running ``code`` (with ``args``) prints last, read as JSON; a failed
    run fails the test with its stderr's end."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def ltray_executable() -> str:
    import sys

    return str(Path(sys.executable).parent / "ltray")


def healthy(url: str) -> bool:
    """Whether ``url`` answers 200 within a second."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[tuple[str, int]]:
    """A real ``mlflow server`` on 127.0.0.1 with its SQLite store and artifacts in ``folder``:
    yields (its URI, its port) once /health answers; stopped on exit."""
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder}/server.db",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(f"{uri}/health"), 120, "mlflow server")
        yield uri, port
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def ray_cluster(nodes: int = 1, cpus: int = 2) -> Iterator[dict[str, str]]:
    """A real Ray cluster started with ``ray start`` on 127.0.0.1, token authentication on (as
    Ray >= 2.59 sets it up): ``nodes`` nodes of ``cpus`` CPUs, the first with resource
    ``node_a``, the second ``node_b``. Yields the environment that reaches it (RAY_ADDRESS, its
    job API's RAY_API_SERVER_ADDRESS, and the token)."""
    ray = str(Path(sys.executable).parent / "ray")
    token = secrets.token_hex(32)
    # this environment's bin first: a submitted job's entrypoint (`ltray train ...`) finds ltray
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": path}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's sockets live here
    port = free_port()
    common = [f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    names = ["node_a", "node_b", "node_c", "node_d"]
    try:
        # the dashboard serves the state API Ray Train's placement-group cleaner needs
        dashboard_port = free_port()
        dashboard = ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
        head = [f"--port={port}", f"--temp-dir={temp_dir}", *dashboard]
        for index in range(nodes):
            where = ["--head", *head] if index == 0 else [f"--address=127.0.0.1:{port}"]
            resources = f'--resources={{"{names[index]}": 1}}'
            subprocess.run(
                [ray, "start", *where, resources, *common],
                env=env,
                check=True,
                capture_output=True,
                timeout=180,
            )
        yield {
            **env,
            "RAY_ADDRESS": f"127.0.0.1:{port}",
            # the job API (`ltray submit`, `ray job submit`) is the dashboard's
            "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
        }
    finally:
        stop_cluster(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_cluster(temp_dir: str, gcs_port: int) -> None:
    """Stop the processes of the cluster in ``temp_dir`` and theirs, and no other: ``ray stop``
    would stop every Ray on the machine (a user's own, another test's)."""
    import signal

    pids = cluster_processes(gcs_port, temp_dir)
    for sig, grace_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 15)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(map(_running, pids)):
            time.sleep(0.2)
            for pid in pids:  # reap the ones that are our children
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)


def cluster_processes(gcs_port: int, temp_dir: str | None = None) -> set[int]:
    """The processes of the Ray cluster whose GCS listens on ``gcs_port`` (and whose files are
    in ``temp_dir``), and all theirs: its nodes' daemons and workers, no other cluster's."""
    marks = (f":{gcs_port} ", f":{gcs_port}\x00", *([temp_dir] if temp_dir else []))
    roots = [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit()
        and int(p) != os.getpid()
        and any(mark in _raw_command_line(int(p)) for mark in marks)
    ]
    pids = set(roots)
    for root in roots:
        pids.update(descendants(root))
    return pids


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _raw_command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") + "\x00"
    except OSError:
        return ""
