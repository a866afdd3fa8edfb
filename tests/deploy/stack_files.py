"""Static checks of the deployment files (docker/compose.yaml, docker/.env.example,
docker/Dockerfile, docker/constraints.txt, docker/kuberay/*.yaml).

Each check takes the files (or their parsed content) and returns a list of problems, one line
each, empty when all is well, so a test can run it on the real files and on a broken copy.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
LOOPBACK = "127.0.0.1"
LTRAY_IMAGE = re.compile(r"^ltray:|/ltray:")

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is a literal $
_COMPOSE_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(?::?[-?+])[^}]*)?\}")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
_URL_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://([^/@\s]+)@", re.IGNORECASE)
_URL_NETLOC = re.compile(r"https?://([A-Za-z0-9_.-]+(?::\d+)?)")


# --- compose: parsing and interpolation --------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(Path(path).read_text())


def compose_variables(text: str) -> set[str]:
    """Every variable that ``docker compose`` interpolates in ``text`` (not ``$$VAR``)."""
    return {m.group(1) for m in _COMPOSE_VAR.finditer(text) if m.group(1)}


def interpolate(value: str, values: Mapping[str, str]) -> str:
    """``value`` as docker compose interpolates it from ``values`` (defaults ignored)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        if name not in values:
            raise KeyError(f"no value for ${{{name}}}")
        return values[name]

    return _COMPOSE_VAR.sub(replace, value)


def env_file_names(text: str) -> set[str]:
    """The variable names an ``.env`` file defines."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            names.add(line.split("=", 1)[0].removeprefix("export ").strip())
    return names


def argv_of(value: Any) -> list[str]:
    """A compose command, entrypoint or health check as an argument list."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def strings_in(value: Any) -> Iterator[str]:
    """Every string (keys included) in a parsed YAML document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def is_ltray_service(service: Mapping[str, Any]) -> bool:
    return "build" in service or bool(LTRAY_IMAGE.search(str(service.get("image", ""))))


# --- the CLIs the services run -----------------------------------------------------------------


@functools.cache
def _cli(name: str) -> Any:
    if name == "ray":
        from ray.scripts.scripts import cli

        return cli
    if name == "mlflow":
        from mlflow.cli import cli

        return cli
    if name == "ltray":
        import typer.main

        from ltray.cli import app

        return typer.main.get_command(app)
    return None


def command_problems(argv: list[str], where: str) -> list[str]:
    """``argv`` must be a ray, mlflow or ltray (sub)command, every ``--option`` one it has.
    (Groups are recognised by their ``commands``: typer carries its own copy of click.)"""
    if not argv:
        return [f"{where}: no command"]
    command = _cli(argv[0])
    if command is None:
        return [f"{where}: {argv[0]!r} is not a ray, mlflow or ltray command"]
    rest = argv[1:]
    path = argv[0]
    while isinstance(getattr(command, "commands", None), Mapping):
        if not rest or rest[0] not in command.commands:
            given = rest[0] if rest else "(nothing)"
            return [f"{where}: {path} has no subcommand {given!r}"]
        path = f"{path} {rest[0]}"
        command, rest = command.commands[rest[0]], rest[1:]
    options = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
    problems = []
    for token in rest:
        if token.startswith("-") and token != "--":
            name = token.split("=", 1)[0]
            if name not in options:
                problems.append(f"{where}: `{path}` has no option {name}")
    return problems


def option_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in ``argv``."""
    for index, token in enumerate(argv):
        if token == name and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(f"{name}="):
            return token.split("=", 1)[1]
    return None


# --- compose checks ----------------------------------------------------------------------------


def image_pinned(image: str) -> bool:
    """A version tag (not ``latest``) or a digest."""
    if "@sha256:" in image:
        return True
    name_end = image.rfind("/")
    colon = image.rfind(":")
    if colon <= name_end:
        return False
    tag = image[colon + 1 :]
    return bool(tag) and tag != "latest" and any(ch.isdigit() for ch in tag)


def port_problems(compose: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, service in compose.get("services", {}).items():
        if service.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host publishes every port on every interface")
        for port in service.get("ports") or []:
            if isinstance(port, Mapping):
                host_ip = port.get("host_ip")
                shown = f"{port.get('published')}:{port.get('target')}"
            else:
                text = str(port)
                parts = text.split(":")
                host_ip = ":".join(parts[:-2]) if len(parts) >= 3 else None
                shown = text
            if host_ip != LOOPBACK:
                problems.append(f"{name}: port {shown} is not bound to {LOOPBACK}")
    return problems


def image_problems(compose: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, service in compose.get("services", {}).items():
        image = service.get("image")
        if image is None:
            problems.append(f"{name}: no image (a built image needs a versioned image: name)")
        elif not image_pinned(str(image)):
            problems.append(f"{name}: image {image} is not pinned to a version")
        build = service.get("build")
        if build is not None:
            dockerfile = build.get("dockerfile") if isinstance(build, Mapping) else None
            if dockerfile != "docker/Dockerfile":
                problems.append(f"{name}: builds {dockerfile!r}, not docker/Dockerfile")
    return problems


def service_command_problems(compose: Mapping[str, Any]) -> list[str]:
    """The ltray image's services run ray, mlflow or ltray, and check their health with them
    (or with python)."""
    problems = []
    for name, service in compose.get("services", {}).items():
        if not is_ltray_service(service):
            continue
        if "entrypoint" in service:
            problems.append(f"{name}: overrides the image's entrypoint")
        problems += command_problems(argv_of(service.get("command")), f"{name} command")
        test = argv_of((service.get("healthcheck") or {}).get("test"))
        if not test or test[0] not in ("CMD", "CMD-SHELL"):
            problems.append(f"{name}: no health check")
        elif test[0] == "CMD" and test[1] != "python":
            problems += command_problems(test[1:], f"{name} health check")
    return problems


def mlflow_service(compose: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The service that runs ``mlflow server`` and its argument list."""
    for name, service in compose.get("services", {}).items():
        argv = argv_of(service.get("command"))
        if argv[:2] == ["mlflow", "server"]:
            return name, argv
    raise LookupError("no service runs `mlflow server`")


def allowed_host_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every Host header that reaches the MLflow server passes its --allowed-hosts: the
    service name (with its port) wherever another service names it, the published port on
    127.0.0.1 and localhost, and its own health check's URL."""
    from mlflow.server.security_utils import is_allowed_host_header

    try:
        name, argv = mlflow_service(compose)
    except LookupError as exc:
        return [str(exc)]
    allowed = [h.strip() for h in (option_value(argv, "--allowed-hosts") or "").split(",")]
    allowed = [h for h in allowed if h]
    if not allowed:
        return [f"{name}: no --allowed-hosts (MLflow 3 then refuses the service name)"]
    if "*" in allowed:
        return [f"{name}: --allowed-hosts * lets any Host header through"]
    port = option_value(argv, "--port") or "5000"
    hosts = set()
    for other, service in compose["services"].items():
        texts = [*environment_of(service).values(), *argv_of(service.get("command"))]
        if other == name:
            texts = argv_of((service.get("healthcheck") or {}).get("test"))
        for text in texts:
            for netloc in _URL_NETLOC.findall(text):
                host = netloc.split(":")[0]
                if host in (name, "localhost", LOOPBACK):
                    hosts.add(netloc if ":" in netloc else f"{netloc}:80")
    for published in compose["services"][name].get("ports") or []:
        if str(published).endswith(f":{port}"):
            outside = str(published).split(":")[-2]
            hosts |= {f"{LOOPBACK}:{outside}", f"localhost:{outside}"}
    missing = sorted(h for h in hosts if not is_allowed_host_header(allowed, h))
    return [f"{name}: Host {h} is not in --allowed-hosts" for h in missing]


def variable_problems(compose: Mapping[str, Any], env_example_text: str) -> list[str]:
    """The variables the compose file uses (in its values, not its comments) are the ones
    .env.example defines."""
    used = set().union(*(compose_variables(text) for text in strings_in(compose)))
    defined = env_file_names(env_example_text)
    problems = [f"${{{v}}} is used in compose.yaml but not in .env.example" for v in used - defined]
    problems += [f"{v} is in .env.example but compose.yaml does not use it" for v in defined - used]
    return sorted(problems)


def compose_secret_problems(compose: Mapping[str, Any]) -> list[str]:
    """A secret's value is a ${VAR} from .env, never written in the file."""
    problems = []
    for name, service in compose.get("services", {}).items():
        for key, value in environment_of(service).items():
            if _SECRET_NAME.search(key) and _COMPOSE_VAR.sub("", value).strip():
                problems.append(f"{name}: {key} is written in compose.yaml, not taken from .env")
    for text in strings_in(compose):
        for userinfo in _URL_USERINFO.findall(text):
            if ":" in userinfo and _COMPOSE_VAR.sub("", userinfo.split(":", 1)[1]):
                problems.append(f"a URL holds a literal password: {_URL_USERINFO.sub('…@', text)}")
    return problems


# Compose-spec keys this stack may use: `docker compose config` would refuse a misspelt one, but
# the tests cannot count on Docker, and a wrong depends_on condition shows only at `up`.
TOP_LEVEL = {"name", "services", "volumes", "networks", "secrets", "configs", "include"}
SERVICE = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "expose",
    "volumes", "healthcheck", "depends_on", "restart", "shm_size", "deploy", "networks", "user",
    "working_dir", "ulimits", "ipc", "labels", "logging", "container_name", "hostname",
    "profiles", "secrets", "configs", "cap_add", "cap_drop", "devices", "gpus", "init",
    "stop_grace_period", "tmpfs", "extra_hosts", "pull_policy", "network_mode",
}  # fmt: skip
HEALTHCHECK = {"test", "interval", "timeout", "retries", "start_period", "start_interval"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def structure_problems(compose: Mapping[str, Any]) -> list[str]:
    """Known keys; every long-running service checks its health; a service waited on as
    healthy has a health check; named volumes are declared."""
    problems = [
        f"unknown top-level key {key!r}"
        for key in compose
        if key not in TOP_LEVEL and not str(key).startswith("x-")
    ]
    services = compose.get("services", {})
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        problems += [f"{name}: unknown key {key!r}" for key in service if key not in SERVICE]
        health = service.get("healthcheck")
        if health is None and service.get("restart") != "no":
            problems.append(f"{name}: a long-running service without a health check")
        problems += [
            f"{name}: unknown healthcheck key {key!r}"
            for key in health or {}
            if key not in HEALTHCHECK
        ]
        depends = service.get("depends_on") or {}
        for other, how in depends.items() if isinstance(depends, Mapping) else []:
            condition = (how or {}).get("condition", "service_started")
            if other not in services:
                problems.append(f"{name}: depends on {other}, which is not a service")
            elif condition not in CONDITIONS:
                problems.append(f"{name}: depends on {other} with unknown condition {condition}")
            elif condition == "service_healthy" and "healthcheck" not in services[other]:
                problems.append(f"{name}: waits for {other} to be healthy; it has no health check")
        for volume in service.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/", "~", "$")) and source not in declared:
                problems.append(f"{name}: volume {source} is not declared under volumes:")
    return problems


def compose_problems(compose_path: Path, env_example_path: Path) -> list[str]:
    """Every check of a compose file and its .env.example."""
    compose = load_yaml(compose_path)
    return [
        *structure_problems(compose),
        *port_problems(compose),
        *image_problems(compose),
        *service_command_problems(compose),
        *allowed_host_problems(compose),
        *variable_problems(compose, Path(env_example_path).read_text()),
        *compose_secret_problems(compose),
    ]


def ignored_by_git(repo: Path, relative: str) -> bool:
    done = subprocess.run(
        ["git", "-C", str(repo), "check-ignore", "-q", relative], capture_output=True, timeout=30
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"git check-ignore failed: {done.stderr.decode().strip()}")
    return done.returncode == 0


# --- image -------------------------------------------------------------------------------------


def dockerfile_base(text: str) -> str:
    """The FROM image of a Dockerfile, its ARG defaults substituted."""
    args: dict[str, str] = {}
    base = None
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "ARG" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            args[key] = value.strip("\"'")
        elif len(words) >= 2 and words[0].upper() == "FROM":
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[1])
    if base is None:
        raise ValueError("no FROM line")
    return base


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    base = dockerfile_base(text)
    if not image_pinned(base):
        problems.append(f"Dockerfile: base image {base} is not pinned to a version")
    users = [line.split()[1] for line in text.splitlines() if line.upper().startswith("USER ")]
    if not users or users[-1] in ("root", "0"):
        problems.append("Dockerfile: the image runs as root (its last USER)")
    for line in _logical_lines(text):
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD"):
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            for source in sources:
                if source.rstrip("/") in (".", "docker", "*") or source.startswith("docker/.env"):
                    problems.append(f"Dockerfile: {line} copies docker/.env into the image")
    installs = [line for line in _logical_lines(text) if "pip install" in line]
    if not installs:
        problems.append("Dockerfile: installs nothing with pip")
    for line in installs:
        if "-c docker/constraints.txt" not in line:
            problems.append(f"Dockerfile: a pip install without -c docker/constraints.txt: {line}")
    return problems


def _logical_lines(text: str) -> list[str]:
    return [" ".join(part.split()) for part in text.replace("\\\n", " ").splitlines()]


def constraint_problems(
    constraints_text: str, pyproject: Mapping[str, Any], makefile_text: str, base_image: str
) -> list[str]:
    """Every constraint an exact pin; each within pyproject.toml's range for that package; torch
    and torchvision as the Makefile pins them; ray as the base image's; the Makefile's install of
    the project under the same constraints."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    problems = []
    for line in constraints_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specs = list(requirement.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"constraints.txt: {line} is not an exact pin")
            continue
        pins[canonicalize_name(requirement.name)] = specs[0].version
    project = pyproject["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["s3"]]
    declared += project["optional-dependencies"]["dev"]
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in pins and not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"constraints.txt: {name}=={pins[name]} is outside {text}")
    for name, version in re.findall(r"(torch|torchvision)==([\w.+]+)", makefile_text):
        if pins.get(name) != version:
            problems.append(f"constraints.txt: {name} {pins.get(name)}, the Makefile's {version}")
    if "CONSTRAINTS := docker/constraints.txt" not in makefile_text or not re.search(
        r"pip install .*-c \$\(CONSTRAINTS\) -e \"\.\[dev\]\"", makefile_text
    ):
        problems.append("Makefile: the project is installed without -c docker/constraints.txt")
    base_ray = re.search(r"rayproject/ray:(\d+\.\d+\.\d+)", base_image)
    if base_ray is None or pins.get("ray") != base_ray.group(1):
        problems.append(
            f"constraints.txt: ray {pins.get('ray')} differs from the base {base_image}"
        )
    for needed in ("torch", "torchvision", "ray", "mlflow", "pyarrow", "s3fs", "psycopg2-binary"):
        if needed not in pins:
            problems.append(f"constraints.txt: {needed} is not pinned")
    if "boto3" not in pins:
        problems.append("constraints.txt: boto3 is not pinned")
    return problems


# --- KubeRay -----------------------------------------------------------------------------------

# The fields of KubeRay v1.6's ray.io/v1 API reference that a RayJob may use (checked by hand:
# kubectl cannot validate a custom resource without a cluster, and the stored CRD predates
# authOptions). An unknown key is a typo that the operator would silently drop.
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip
RAYCLUSTER_SPEC = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs", "authOptions",
}  # fmt: skip
AUTH_OPTIONS = {"mode", "secretName", "enableK8sTokenAuth"}
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
CONTAINER = {
    "name", "image", "command", "args", "workingDir", "ports", "envFrom", "env", "resources",
    "volumeMounts", "securityContext", "lifecycle", "livenessProbe", "readinessProbe",
    "imagePullPolicy",
}  # fmt: skip


def _unknown(where: str, value: Any, known: set[str]) -> list[str]:
    if not isinstance(value, Mapping):
        return [f"{where}: not a mapping"]
    return [f"{where}: unknown field {key!r}" for key in value if key not in known]


def _cpus(quantity: Any) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def entrypoint_argv(entrypoint: str) -> list[str]:
    """The command a RayJob entrypoint runs: through ``sh -c '... && exec CMD'`` if so."""
    argv = shlex.split(entrypoint)
    if argv[:2] == ["sh", "-c"] and len(argv) == 3:
        argv = shlex.split(argv[2].split("&&")[-1])
    return argv[1:] if argv[:1] == ["exec"] else argv


def rayjob_problems(rayjob: Mapping[str, Any], repo: Path) -> list[str]:
    """A RayJob for an ltray job: fields KubeRay knows, token auth, a GPU group that holds the
    job's workers, pinned images, secrets through envFrom only, the cluster deleted after the
    job, and an entrypoint that is ``ltray train`` of a job file that validates."""
    from ltray.config import load_job
    from ltray.errors import LtrayError

    problems = []
    if rayjob.get("apiVersion") != "ray.io/v1" or rayjob.get("kind") != "RayJob":
        problems.append("not a ray.io/v1 RayJob")
    spec = rayjob.get("spec") or {}
    problems += _unknown("spec", spec, RAYJOB_SPEC)
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("spec.shutdownAfterJobFinishes is not true: the cluster outlives the job")
    ttl = spec.get("ttlSecondsAfterFinished")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
        problems.append(f"spec.ttlSecondsAfterFinished is {ttl!r}, not a whole number of seconds")
    cluster = spec.get("rayClusterSpec") or {}
    problems += _unknown("spec.rayClusterSpec", cluster, RAYCLUSTER_SPEC)
    auth = cluster.get("authOptions")
    if not isinstance(auth, Mapping) or auth.get("mode") != "token":
        problems.append("spec.rayClusterSpec.authOptions.mode is not token")
    else:
        problems += _unknown("spec.rayClusterSpec.authOptions", auth, AUTH_OPTIONS)
    head = cluster.get("headGroupSpec") or {}
    problems += _unknown("headGroupSpec", head, HEAD_GROUP)
    groups = cluster.get("workerGroupSpecs") or []
    pods = [("headGroupSpec", head)]
    for index, group in enumerate(groups):
        problems += _unknown(f"workerGroupSpecs[{index}]", group, WORKER_GROUP)
        pods.append((f"workerGroupSpecs[{index}]", group))
    for where, group in pods:
        for key, value in (group.get("rayStartParams") or {}).items():
            if not isinstance(value, str):
                problems.append(f"{where}.rayStartParams.{key}: {value!r} is not a string")
        containers = (((group.get("template") or {}).get("spec")) or {}).get("containers") or []
        if not containers:
            problems.append(f"{where}: no containers")
        for container in containers:
            cwhere = f"{where} container {container.get('name')}"
            problems += _unknown(cwhere, container, CONTAINER)
            if not image_pinned(str(container.get("image", ""))):
                problems.append(f"{cwhere}: image {container.get('image')} is not pinned")
            secrets = [e.get("secretRef", {}).get("name") for e in container.get("envFrom", [])]
            if not any(secrets):
                problems.append(f"{cwhere}: no envFrom secretRef for S3 and MLflow")
            for env in container.get("env") or []:
                if _SECRET_NAME.search(str(env.get("name"))) and "value" in env:
                    problems.append(f"{cwhere}: {env.get('name')} is written in the file")
    for text in strings_in(rayjob):
        for userinfo in _URL_USERINFO.findall(text):
            if ":" in userinfo:
                problems.append("a URL in the RayJob holds a password")

    argv = entrypoint_argv(str(spec.get("entrypoint", "")))
    problems += command_problems(argv, "spec.entrypoint")
    if argv[:2] != ["ltray", "train"] or len(argv) < 3:
        return [*problems, f"spec.entrypoint runs {' '.join(argv)!r}, not `ltray train JOB`"]
    job_file = repo / argv[2]
    if not job_file.is_file():
        return [*problems, f"spec.entrypoint: no job file {argv[2]} in the image's /opt/ltray"]
    overrides = [
        re.sub(r"\$\{?(\w+)\}?", "from-the-environment", argv[i + 1])
        for i, token in enumerate(argv[:-1])
        if token == "--set"
    ]
    try:
        job = load_job(job_file, overrides)
    except LtrayError as exc:
        return [*problems, f"spec.entrypoint: {exc}"]
    return problems + _capacity_problems(job, groups)


def _capacity_problems(job: Any, groups: list[Mapping[str, Any]]) -> list[str]:
    """The GPU worker groups hold the job's workers, each with its CPUs."""
    scaling = job.scaling
    gpu_pods = []
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            limits = (container.get("resources") or {}).get("limits") or {}
            gpus = int(limits.get("nvidia.com/gpu", 0))
            if gpus:
                gpu_pods.append((group.get("replicas", 0), gpus, _cpus(limits.get("cpu", 0))))
    if scaling.use_gpu is False:
        return []
    if not gpu_pods:
        return ["no worker group has nvidia.com/gpu limits"]
    problems = []
    total = sum(replicas * gpus for replicas, gpus, _ in gpu_pods)
    if total < scaling.num_workers:
        problems.append(
            f"the GPU groups hold {total} GPUs, the job asks for {scaling.num_workers} workers"
        )
    for _, gpus, cpus in gpu_pods:
        needed = gpus * scaling.cpus_per_worker
        if cpus < needed:
            problems.append(
                f"a GPU pod has {cpus:g} CPUs, its {gpus} workers need {needed:g} "
                f"({scaling.cpus_per_worker} each)"
            )
    return problems


def rayjob_file_problems(path: Path, repo: Path = REPO) -> list[str]:
    return rayjob_problems(load_yaml(path), repo)
