"""The servers of docker/compose.yaml, started natively on 127.0.0.1 for tests: PostgreSQL, an
S3-compatible store (moto's server) and ``mlflow server`` with the very arguments and
environment the compose file gives it, its host names, ports and credentials substituted.

Each is a context manager, so any test module can combine them (contextlib.ExitStack).
Missing pieces (PostgreSQL's binaries, psycopg2, an unprivileged user to run PostgreSQL as
root) skip the calling test with a reason instead of failing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from deploy.stack_files import DOCKER, argv_of, environment_of, interpolate, load_yaml
from processes import free_port, healthy, wait_for

COMPOSE = DOCKER / "compose.yaml"
BIN = Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    password: str
    database: str
    host: str = "127.0.0.1"

    def connect(self):
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.database,
        )


@dataclasses.dataclass(frozen=True)
class S3:
    endpoint: str  # http://127.0.0.1:PORT
    key: str
    secret: str
    bucket: str

    @property
    def netloc(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def postgres_binaries() -> tuple[str, str]:
    """initdb and pg_ctl from PATH or Debian's /usr/lib/postgresql/N/bin; skips without them."""
    found = []
    for name in ("initdb", "pg_ctl"):
        path = shutil.which(name) or next(
            iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
        )
        if path is None:
            pytest.skip(f"needs PostgreSQL's {name} (PostgreSQL server binaries not installed)")
        found.append(path)
    return found[0], found[1]


def _unprivileged() -> tuple[list[str], int, int]:
    """The command prefix that runs PostgreSQL unprivileged (it refuses root) and that user's
    uid and gid: nothing when the tests do not run as root, else setpriv to ``nobody``."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    setpriv = shutil.which("setpriv")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        nobody = None
    if setpriv is None or nobody is None:
        pytest.skip("PostgreSQL refuses to run as root, and setpriv or the user nobody is missing")
    uid, gid = nobody.pw_uid, nobody.pw_gid
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"], uid, gid


@contextlib.contextmanager
def postgres_server(database: str = "mlflow") -> Iterator[Postgres]:
    """A throw-away PostgreSQL on 127.0.0.1 and a free port, password authentication on, with an
    empty ``database``; run as an unprivileged user when the tests run as root."""
    pytest.importorskip("psycopg2", reason="needs psycopg2 (pip install psycopg2-binary)")
    initdb, pg_ctl = postgres_binaries()
    as_user, uid, gid = _unprivileged()
    # under /tmp (not pytest's root-only tmp_path) so that the unprivileged user reaches it
    folder = Path(tempfile.mkdtemp(prefix="ltray-pg-", dir="/tmp"))
    server = Postgres(free_port(), "ltray", secrets.token_hex(12), database)
    password_file = folder / "password"
    password_file.write_text(server.password)
    for path in (folder, password_file):
        os.chown(path, uid, gid)
    data = folder / "data"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def run(*argv: str) -> None:
        done = subprocess.run(  # from its own folder: the user may not enter the checkout's
            [*as_user, *argv], cwd=folder, env=env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            log = folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{done.stderr}{done.stdout}{tail}")

    started = False
    try:
        run(
            initdb, "-D", str(data), "-U", server.user, f"--pwfile={password_file}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {server.port} "
            f"-c unix_socket_directories={folder} -c fsync=off"
        )
        run(pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w", "start")
        started = True
        admin = dataclasses.replace(server, database="postgres").connect()
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
        admin.close()
        yield server
    finally:
        if started:
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def s3_server(bucket: str = "ltray") -> Iterator[S3]:
    """moto's S3 server on 127.0.0.1 and a free port, with ``bucket`` created."""
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server]")
    pytest.importorskip("boto3", reason="needs boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        store = S3(f"http://{host}:{port}", "LTRAYSTACKKEY", secrets.token_hex(16), bucket)
        store.client().create_bucket(Bucket=bucket)
        yield store
    finally:
        server.stop()


def _substitute(text: str, values: Mapping[str, str], hosts: Mapping[str, str]) -> str:
    text = interpolate(text, values)
    for service_address, address in hosts.items():
        text = text.replace(service_address, address)
    return text


def compose_environment(
    service: str, values: Mapping[str, str], hosts: Mapping[str, str], compose: Path = COMPOSE
) -> dict[str, str]:
    """A compose service's environment, its ${VARS} from ``values`` and its service addresses
    (``minio:9000``) replaced as ``hosts`` maps them."""
    spec = load_yaml(compose)["services"][service]
    return {k: _substitute(v, values, hosts) for k, v in environment_of(spec).items()}


def compose_command(
    service: str, values: Mapping[str, str], hosts: Mapping[str, str], compose: Path = COMPOSE
) -> list[str]:
    """A compose service's command, substituted as :func:`compose_environment` does."""
    spec = load_yaml(compose)["services"][service]
    return [_substitute(arg, values, hosts) for arg in argv_of(spec.get("command"))]


def _with_option(argv: list[str], name: str, value: str) -> list[str]:
    out = [arg for arg in argv if not arg.startswith(f"{name}=")]
    if name in out:
        index = out.index(name)
        del out[index : index + 2]
    return [*out, f"{name}={value}"]


@contextlib.contextmanager
def compose_mlflow_server(
    values: Mapping[str, str],
    hosts: Mapping[str, str],
    port: int,
    log: Path,
    service: str = "mlflow",
    compose: Path = COMPOSE,
) -> Iterator[str]:
    """The compose file's ``mlflow server`` line and environment, run here: its ${VARS} from
    ``values``, the service addresses it names (``postgres:5432``, ``minio:9000``,
    ``mlflow:5000``) replaced as ``hosts`` maps them, listening on 127.0.0.1:``port``. Yields
    its URI once /health answers; its output goes to ``log``."""
    argv = compose_command(service, values, hosts, compose)
    assert argv[:2] == ["mlflow", "server"], argv
    argv = _with_option(_with_option(argv, "--host", "127.0.0.1"), "--port", str(port))
    argv[0] = str(BIN / "mlflow")
    env = {**os.environ, **compose_environment(service, values, hosts, compose)}
    uri = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for(lambda: process.poll() is not None or healthy(f"{uri}/health"), 180, "mlflow")
        except TimeoutError:
            raise RuntimeError(
                f"mlflow server never answered:\n{log.read_text()[-3000:]}"
            ) from None
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
