"""The deployment files, checked statically (no Docker, no Kubernetes, no server): the compose
stack, its .env.example, the image and its pins, the KubeRay RayJob. Each check also runs on a
broken copy, to show it catches what it is for."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from deploy.stack_files import (
    DOCKER,
    REPO,
    compose_problems,
    constraint_problems,
    dockerfile_base,
    dockerfile_problems,
    ignored_by_git,
    image_pinned,
    rayjob_file_problems,
)

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomli")

COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
RAYJOB = DOCKER / "kuberay" / "rayjob-inat18.yaml"


def edited_copy(tmp_path: Path, edit: Callable[[str], str], name: str) -> Path:
    """A copy of docker/NAME with ``edit`` applied, which must change it."""
    original = (DOCKER / name).read_text()
    changed = edit(original)
    assert changed != original, "the edit must change the file"
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(changed)
    return target


def replace(old: str, new: str, count: int = 1) -> Callable[[str], str]:
    return lambda text: text.replace(old, new, count)


def constraints_check(constraints: str, dockerfile: str, makefile: str | None = None) -> list[str]:
    return constraint_problems(
        constraints,
        tomllib.loads((REPO / "pyproject.toml").read_text()),
        (REPO / "Makefile").read_text() if makefile is None else makefile,
        dockerfile_base(dockerfile),
    )


def test_the_files_parse_as_yaml():
    compose = yaml.safe_load(COMPOSE.read_text())
    assert {"ray-head", "ray-worker", "mlflow", "postgres", "minio", "minio-setup"} <= set(
        compose["services"]
    )
    assert yaml.safe_load(RAYJOB.read_text())["kind"] == "RayJob"


def test_the_compose_stack_passes_every_check():
    assert compose_problems(COMPOSE, ENV_EXAMPLE) == []


def test_the_rayjob_passes_every_check():
    assert rayjob_file_problems(RAYJOB) == []


def test_the_image_is_pinned_non_root_and_installs_the_tested_versions():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert dockerfile_problems(dockerfile) == []
    assert constraints_check((DOCKER / "constraints.txt").read_text(), dockerfile) == []


def test_docker_env_stays_out_of_the_build_context():
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert "docker/.env" in ignored


def test_docker_env_is_ignored_by_git_and_the_example_is_not():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    assert ignored_by_git(REPO, "docker/.env")
    assert not ignored_by_git(REPO, "docker/.env.example")


def test_the_gitignore_check_fails_without_the_rule(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=30)
    (tmp_path / ".gitignore").write_text("/.venv/\n")
    assert not ignored_by_git(tmp_path, "docker/.env")


@pytest.mark.parametrize(
    "image, pinned",
    [
        ("postgres:16.6-bookworm", True),
        ("minio/minio:RELEASE.2025-04-22T22-12-26Z", True),
        ("registry.example.com:5000/ltray:0.1.0", True),
        ("postgres@sha256:" + "0" * 64, True),
        ("postgres", False),
        ("postgres:latest", False),
        ("registry.example.com:5000/ltray", False),
        ("rayproject/ray:nightly-gpu", False),
    ],
)
def test_image_pinned(image, pinned):
    assert image_pinned(image) is pinned


COMPOSE_BREAKS = {
    "a misspelt key": (
        replace('healthcheck:\n      test: ["CMD", "mc"', 'healtcheck:\n      test: ["CMD", "mc"'),
        "minio: unknown key 'healtcheck'",
    ),
    "a service waited on as healthy without a health check": (
        replace('healthcheck:\n      test: ["CMD-SHELL"', 'labels:\n      test: ["CMD-SHELL"'),
        "mlflow: waits for postgres to be healthy; it has no health check",
    ),
    "an undeclared volume": (
        replace("- minio-data:/data", "- minio-store:/data"),
        "minio: volume minio-store is not declared under volumes:",
    ),
    "a port on 0.0.0.0": (
        replace('"127.0.0.1:5000:5000"', '"0.0.0.0:5000:5000"'),
        "mlflow: port 0.0.0.0:5000:5000 is not bound to 127.0.0.1",
    ),
    "a port on every interface": (
        replace('"127.0.0.1:8265:8265"', '"8265:8265"'),
        "ray-head: port 8265:8265 is not bound to 127.0.0.1",
    ),
    "an image on latest": (
        replace("postgres:16.6-bookworm", "postgres:latest"),
        "postgres: image postgres:latest is not pinned to a version",
    ),
    "an image without a tag": (
        replace("minio/mc:RELEASE.2025-04-16T18-13-26Z", "minio/mc"),
        "minio-setup: image minio/mc is not pinned to a version",
    ),
    "the built image without a version": (
        replace("image: ltray:0.1.0", "image: ltray"),
        "mlflow: image ltray is not pinned to a version",
    ),
    "the service name missing from --allowed-hosts": (
        replace("--allowed-hosts=mlflow,mlflow:5000,", "--allowed-hosts="),
        "mlflow: Host mlflow:5000 is not in --allowed-hosts",
    ),
    "the published port missing from --allowed-hosts": (
        replace(",127.0.0.1,127.0.0.1:5000", ""),
        "mlflow: Host 127.0.0.1:5000 is not in --allowed-hosts",
    ),
    "a ray start option that does not exist": (
        replace("--dashboard-port=8265", "--dashboard-prt=8265"),
        "ray-head command: `ray start` has no option --dashboard-prt",
    ),
    "an mlflow server option that does not exist": (
        replace("--serve-artifacts", "--serve-artefacts"),
        "mlflow command: `mlflow server` has no option --serve-artefacts",
    ),
    "a ray subcommand that does not exist": (
        replace("- start\n      - --address", "- begin\n      - --address"),
        "ray-worker command: ray has no subcommand 'begin'",
    ),
    "a command that is not ray, mlflow or ltray": (
        replace("      - mlflow\n      - server", "      - gunicorn\n      - server"),
        "mlflow command: 'gunicorn' is not a ray, mlflow or ltray command",
    ),
    "a variable that .env.example does not define": (
        replace("${S3_BUCKET}/mlflow", "${S3_BUCKETS}/mlflow"),
        "${S3_BUCKETS} is used in compose.yaml but not in .env.example",
    ),
    "a secret written in the file": (
        replace("AWS_SECRET_ACCESS_KEY: ${LTRAY_S3_SECRET_KEY}", "AWS_SECRET_ACCESS_KEY: hunter22"),
        "AWS_SECRET_ACCESS_KEY is written in compose.yaml, not taken from .env",
    ),
    "a password written in a URL": (
        replace(":${POSTGRES_PASSWORD}@", ":hunter22@"),
        "a URL holds a literal password",
    ),
}  # fmt: skip


@pytest.mark.parametrize("edit, problem", COMPOSE_BREAKS.values(), ids=COMPOSE_BREAKS.keys())
def test_a_broken_compose_file_is_caught(tmp_path, edit, problem):
    broken = edited_copy(tmp_path, edit, "compose.yaml")
    problems = compose_problems(broken, ENV_EXAMPLE)
    assert any(problem in p for p in problems), problems


def test_a_variable_missing_from_env_example_is_caught(tmp_path):
    example = edited_copy(tmp_path, replace("\nS3_BUCKET=ltray", "\n"), ".env.example")
    assert compose_problems(COMPOSE, example) == [
        "${S3_BUCKET} is used in compose.yaml but not in .env.example"
    ]


RAYJOB_BREAKS = {
    "token auth off": (
        replace("mode: token", "mode: disabled"),
        "spec.rayClusterSpec.authOptions.mode is not token",
    ),
    "a misspelt field": (
        replace("ttlSecondsAfterFinished:", "ttlSecondsAfterFinish:"),
        "spec: unknown field 'ttlSecondsAfterFinish'",
    ),
    "the cluster kept after the job": (
        replace("shutdownAfterJobFinishes: true", "shutdownAfterJobFinishes: false"),
        "spec.shutdownAfterJobFinishes is not true",
    ),
    "an unpinned image": (
        replace("registry.example.com/ltray:0.1.0", "registry.example.com/ltray:latest"),
        "image registry.example.com/ltray:latest is not pinned",
    ),
    "a job file that does not exist": (
        replace("train jobs/inat18.yaml", "train jobs/inat19.yaml"),
        "spec.entrypoint: no job file jobs/inat19.yaml",
    ),
    "an override the job refuses": (
        replace("jobs/inat18.yaml'", "jobs/inat18.yaml --set schedule.epochs=0'"),
        "schedule.epochs",
    ),
    "a command that is not ltray train": (
        replace("exec ltray train", "exec ltray tarin"),
        "spec.entrypoint: ltray has no subcommand 'tarin'",
    ),
    "too few GPUs for the job's workers": (
        replace('nvidia.com/gpu: "8"', 'nvidia.com/gpu: "4"', 2),
        "the GPU groups hold 8 GPUs, the job asks for 16 workers",
    ),
    "too few CPUs for the job's workers": (
        replace('cpu: "72"', 'cpu: "16"', 2),
        "a GPU pod has 16 CPUs, its 8 workers need 64",
    ),
    "no secretRef": (
        replace("workingDir: /opt/ltray\n                envFrom:\n"
                "                  - secretRef:\n                      name: ltray-s3\n"
                "                  - secretRef:\n                      name: ltray-mlflow\n",
                "workingDir: /opt/ltray\n"),
        "ray-worker: no envFrom secretRef for S3 and MLflow",
    ),
    "a secret written in the file": (
        replace("workingDir: /opt/ltray\n              envFrom:",
                "workingDir: /opt/ltray\n              env:\n                - name: "
                "AWS_SECRET_ACCESS_KEY\n                  value: hunter22\n              envFrom:"),
        "ray-head: AWS_SECRET_ACCESS_KEY is written in the file",
    ),
    "a number where KubeRay wants a string": (
        replace('num-gpus: "0"', "num-gpus: 0"),
        "headGroupSpec.rayStartParams.num-gpus: 0 is not a string",
    ),
}  # fmt: skip


@pytest.mark.parametrize("edit, problem", RAYJOB_BREAKS.values(), ids=RAYJOB_BREAKS.keys())
def test_a_broken_rayjob_is_caught(tmp_path, edit, problem):
    broken = edited_copy(tmp_path, edit, "kuberay/rayjob-inat18.yaml")
    problems = rayjob_file_problems(broken)
    assert any(problem in p for p in problems), problems


IMAGE_BREAKS = {
    "a base on latest": (
        replace("ARG BASE=rayproject/ray:2.60.0-py311-cu128", "ARG BASE=rayproject/ray:latest"),
        "base image rayproject/ray:latest is not pinned",
    ),
    "root at the end": (
        lambda text: text + "USER root\n",
        "the image runs as root",
    ),
    "the whole docker folder copied in": (
        replace("COPY --chown=ray:users docker/constraints.txt ./docker/constraints.txt",
                "COPY --chown=ray:users docker ./docker"),
        "copies docker/.env into the image",
    ),
    "an install without the constraints": (
        replace('pip install --no-cache-dir -c docker/constraints.txt ".[s3]"',
                'pip install --no-cache-dir ".[s3]"'),
        "a pip install without -c docker/constraints.txt",
    ),
}  # fmt: skip


@pytest.mark.parametrize("edit, problem", IMAGE_BREAKS.values(), ids=IMAGE_BREAKS.keys())
def test_a_broken_dockerfile_is_caught(tmp_path, edit, problem):
    broken = edited_copy(tmp_path, edit, "Dockerfile").read_text()
    problems = dockerfile_problems(broken)
    assert any(problem in p for p in problems), problems


CONSTRAINT_BREAKS = {
    "a range instead of a pin": (
        replace("mlflow==3.17.2", "mlflow>=3.17"),
        "constraints.txt: mlflow>=3.17 is not an exact pin",
    ),
    "a pin outside pyproject's range": (
        replace("optuna==5.0.0", "optuna==4.5.0"),
        "constraints.txt: optuna==4.5.0 is outside optuna>=5.0,<5.1",
    ),
    "torch other than the Makefile's": (
        replace("torch==2.14.1", "torch==2.13.0"),
        "constraints.txt: torch 2.13.0, the Makefile's 2.14.1",
    ),
    "ray other than the base image's": (
        replace("ray==2.60.0", "ray==2.59.0"),
        "constraints.txt: ray 2.59.0 differs from the base rayproject/ray:2.60.0-py311-cu128",
    ),
    "psycopg2 unpinned": (
        replace("psycopg2-binary==2.9.13\n", ""),
        "constraints.txt: psycopg2-binary is not pinned",
    ),
}  # fmt: skip


@pytest.mark.parametrize("edit, problem", CONSTRAINT_BREAKS.values(), ids=CONSTRAINT_BREAKS.keys())
def test_broken_constraints_are_caught(tmp_path, edit, problem):
    broken = edited_copy(tmp_path, edit, "constraints.txt").read_text()
    problems = constraints_check(broken, (DOCKER / "Dockerfile").read_text())
    assert problem in problems, problems


def test_a_makefile_install_without_the_constraints_is_caught():
    makefile = (REPO / "Makefile").read_text()
    unpinned = makefile.replace("-c $(CONSTRAINTS) -e", "-e")
    assert unpinned != makefile
    problems = constraints_check(
        (DOCKER / "constraints.txt").read_text(), (DOCKER / "Dockerfile").read_text(), unpinned
    )
    assert problems == ["Makefile: the project is installed without -c docker/constraints.txt"]


# The native stack (test_native_stack.py) skips, never fails, on a machine without PostgreSQL.


def test_the_native_stack_skips_without_postgres_binaries(monkeypatch):
    from deploy import stack

    monkeypatch.setattr(stack.shutil, "which", lambda name: None)
    monkeypatch.setattr(stack.glob, "glob", lambda pattern: [])
    with pytest.raises(pytest.skip.Exception, match="needs PostgreSQL's initdb"):
        stack.postgres_binaries()


def test_the_native_stack_skips_as_root_without_an_unprivileged_user(monkeypatch):
    from deploy import stack

    monkeypatch.setattr(stack.os, "geteuid", lambda: 0)
    monkeypatch.setattr(stack.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="refuses to run as root"):
        stack._unprivileged()
