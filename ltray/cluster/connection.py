"""Reaching a Ray cluster's job API (the head's dashboard, port 8265): the address, the token,
and one clear line for each way that fails.

Ray >= 2.59 clusters started with ``ray start`` use token authentication: every request carries
``Authorization: Bearer TOKEN``. The token comes from where Ray's own clients take it:
``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``.
It is sent when ``RAY_AUTH_MODE=token``, or when the mode is unset and a token is found;
``RAY_AUTH_MODE=disabled`` sends none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.errors import LtrayError
from ltray.secrets import redact_url

DEFAULT_TOKEN_FILE = "~/.ray/auth_token"
TIMEOUT_S = 15.0
HOW_TO_SET = (
    "export RAY_AUTH_MODE=token and the head's token as RAY_AUTH_TOKEN (or a file named by "
    "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token); `ray get-auth-token` prints it on the head"
)


@dataclass(frozen=True)
class Token:
    value: str | None
    source: str  # where it was read, or where it was looked for


def dashboard_url(address: str | None) -> str:
    """``--address``, else RAY_API_SERVER_ADDRESS, else an http(s) RAY_ADDRESS, as
    ``http://HOST:PORT`` (a bare ``HOST:PORT`` gets ``http://``)."""
    candidates = [address, os.environ.get("RAY_API_SERVER_ADDRESS")]
    ray_address = os.environ.get("RAY_ADDRESS", "")
    if ray_address.startswith(("http://", "https://")):
        candidates.append(ray_address)
    chosen = next((c for c in candidates if c), None)
    if not chosen:
        raise LtrayError(
            "no cluster address: pass --address http://HEAD:8265 (the head's dashboard) or set "
            "RAY_API_SERVER_ADDRESS"
        )
    if chosen.startswith("ray://"):
        raise LtrayError(
            f"--address {redact_url(chosen)}: that is a Ray Client address; jobs are submitted "
            "to the dashboard's job API, http://HEAD:8265"
        )
    if "://" not in chosen:
        chosen = f"http://{chosen}"
    if not chosen.startswith(("http://", "https://")):
        raise LtrayError(f"--address {redact_url(chosen)}: expected http://HEAD:8265")
    return chosen.rstrip("/")


def find_token() -> Token:
    """The token this shell would send, and where it came from (None: none sent)."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return Token(None, "RAY_AUTH_MODE=disabled")
    if os.environ.get("RAY_AUTH_TOKEN"):
        return Token(os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named or DEFAULT_TOKEN_FILE).expanduser()
    source = f"RAY_AUTH_TOKEN_PATH={named}" if named else DEFAULT_TOKEN_FILE
    try:
        value = path.read_text().strip()
    except OSError:
        if named:
            raise LtrayError(
                f"RAY_AUTH_TOKEN_PATH names {named}, which cannot be read; {HOW_TO_SET}"
            ) from None
        return Token(None, f"RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or {DEFAULT_TOKEN_FILE}")
    return Token(value or None, source)


def auth_headers(token: Token) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.value}"} if token.value else {}


def check_reachable(url: str, token: Token) -> str:
    """GET the head's /api/version: returns the cluster's Ray version, or raises one line that
    says what is wrong (unreachable, not a dashboard, no token, a wrong token)."""
    import requests

    shown = redact_url(url)
    try:
        response = requests.get(
            f"{url}/api/version", headers=auth_headers(token), timeout=TIMEOUT_S
        )
    except requests.exceptions.Timeout:
        raise LtrayError(
            f"the Ray dashboard at {shown} did not answer in {TIMEOUT_S:.0f} s: is the head up "
            "and its port reachable from here?"
        ) from None
    except requests.exceptions.RequestException as exc:
        reason = type(exc).__name__
        if isinstance(exc, requests.exceptions.ConnectionError):
            reason = "connection refused or host unreachable"
        raise LtrayError(
            f"cannot reach the Ray dashboard at {shown} ({reason}): is the head up, started "
            "with its dashboard (ray[default]), and its port (8265) reachable from here?"
        ) from None
    if response.status_code == 401:
        raise LtrayError(
            f"the cluster at {shown} uses token authentication and no token was sent (none in "
            f"{token.source}): {HOW_TO_SET}"
        )
    if response.status_code == 403:
        raise LtrayError(
            f"the cluster at {shown} refused the token from {token.source}: it is not this "
            f"cluster's token; {HOW_TO_SET}"
        )
    try:
        response.raise_for_status()
        return str(response.json()["ray_version"])
    except (requests.exceptions.HTTPError, ValueError, KeyError):
        raise LtrayError(
            f"{shown} answered /api/version with HTTP {response.status_code}: is it a Ray "
            "dashboard (the head's port 8265)?"
        ) from None


@dataclass
class Cluster:
    """A reachable cluster's job API: its URL, the client, and its Ray version."""

    url: str
    client: Any  # ray.job_submission.JobSubmissionClient
    ray_version: str
    headers: dict[str, str]

    @property
    def shown(self) -> str:
        return redact_url(self.url)

    def state(self, resource: str, filters: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        """Ray's state API on this cluster (with the token): each ``resource`` record ("nodes",
        "actors") matching ``filters``, in detail, as a dict."""
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        client = StateApiClient(address=self.url, headers=dict(self.headers))
        records = client.list(
            StateResource(resource),
            options=ListApiOptions(filters=filters, detail=True),
            raise_on_missing_output=False,
        )
        return [r if isinstance(r, dict) else vars(r) for r in records]

    def alive_nodes(self) -> list[dict[str, float]]:
        """Each alive node's resources (CPU, GPU, memory, custom)."""
        nodes = self.state("nodes", [("state", "=", "ALIVE")])
        return [dict(node.get("resources_total") or {}) for node in nodes]


def connect(address: str | None) -> Cluster:
    """Check the address and the token, then open Ray's ``JobSubmissionClient``."""
    url = dashboard_url(address)
    token = find_token()
    version = check_reachable(url, token)
    from ray.job_submission import JobSubmissionClient

    headers = auth_headers(token)
    try:
        client = JobSubmissionClient(url, headers=dict(headers))
    except (ConnectionError, RuntimeError) as exc:  # raced a head going down
        raise LtrayError(f"cannot open the job API at {redact_url(url)}: {exc}") from None
    return Cluster(url=url, client=client, ray_version=version, headers=headers)
