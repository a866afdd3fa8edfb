"""Helpers for tests that run real processes: free ports, process trees, waiting."""

from __future__ import annotations

import contextlib
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
    ``node_a``, the second ``node_b``. Yields the environment that reaches it (RAY_ADDRESS and
    the token)."""
    ray = str(Path(sys.executable).parent / "ray")
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's sockets live here
    port = free_port()
    common = [f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    names = ["node_a", "node_b", "node_c", "node_d"]
    try:
        # the dashboard serves the state API Ray Train's placement-group cleaner needs
        dashboard = ["--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}"]
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
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
