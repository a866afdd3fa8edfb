"""The one home for secrets: which keys hold them, and how to keep them out of what ltray writes.

Secrets reach ltray in three places: values under secret-looking keys (``storage_options``,
``aws_secret_access_key``, ...), the ``user:password@`` part of a URL, and token-like query
parameters of a URL (``?token=``, ``X-Amz-Signature=``, ``sig=``). Params, tags, error messages
and log lines pass through these functions; :func:`split_secrets` takes them out of a job before
it travels to other processes, and :func:`join_secrets` puts them back where they are used.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

SECRET_WORDS = (
    "key",
    "secret",
    "token",
    "password",
    "passwd",
    "credential",
    "auth",
    "signature",
    "connection_string",  # Azure's, which holds the account key
    "cookie",
)
# query parameters whose names are too short to match as words: Azure SAS, generic ones
SECRET_PARAMS = ("sig", "pwd", "pass", "code")
MASK = "***"
MIN_SECRET_LENGTH = 3  # shorter values would mask ordinary text everywhere

# scheme://userinfo@ : up to the last '@' before the path, so an unencoded '@' in a password
# is still part of it; or user:password@ with an unencoded '/' in the password (AWS secrets
# hold '/' and '+'), up to the first '@'. The second form may mask a path such as
# http://host:80/a@b too: better one URL shown badly than one secret shown.
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#\s]*|[^:/?#\s@]+:[^@\s?#]*)@")
_QUERY_PARAM = re.compile(r"([?&;])([A-Za-z0-9_.\-]+)=([^&;#\s'\"]*)")


def is_secret_key(key: Any) -> bool:
    """A config key or query parameter whose value is a secret."""
    key = str(key).lower()
    return key == "storage_options" or any(word in key for word in SECRET_WORDS)


def is_secret_param(name: str) -> bool:
    return is_secret_key(name) or name.lower() in SECRET_PARAMS


def redact_url(url: str) -> str:
    """``url`` (or any text holding URLs) with each ``user:password@`` part and each secret
    query value replaced by '***': what a user may read, in messages and params."""
    text = _URL_USERINFO.sub(rf"\1{MASK}@", str(url))

    def mask(match: re.Match[str]) -> str:
        sep, name, value = match.groups()
        return f"{sep}{name}={MASK}" if is_secret_param(name) and value else match.group(0)

    return _QUERY_PARAM.sub(mask, text)


def strip_userinfo(url: str) -> str:
    """``url`` without its ``user:password@`` part."""
    return _URL_USERINFO.sub(r"\1", str(url))


def public_url(url: str) -> str:
    """``url`` without its userinfo and secret query parameters: where a thing lives, shown
    as a tag or given to a client that takes its credentials another way."""
    scheme_end = str(url).find("://")
    if scheme_end < 0:
        return str(url)
    text = strip_userinfo(url)
    base, sep, rest = text.partition("?")
    if not sep:
        return text
    query, hash_sep, fragment = rest.partition("#")
    kept = [p for p in query.split("&") if p and not is_secret_param(p.split("=", 1)[0])]
    out = base + ("?" + "&".join(kept) if kept else "")
    return out + hash_sep + fragment


def url_credentials(url: str) -> tuple[str | None, str | None]:
    """(user, password) of a URL's userinfo, percent-decoded; (None, None) without one."""
    match = _URL_USERINFO.match(str(url).strip())
    if match is None:
        return None, None
    user, sep, password = match.group(2).partition(":")
    return unquote(user) or None, (unquote(password) if sep else None)


def url_secrets(text: str) -> list[str]:
    """The secret parts of every URL in ``text``: userinfo passwords (a userinfo without a
    password is a token, so all of it) and secret query values, as written and decoded."""
    found: list[str] = []
    for match in _URL_USERINFO.finditer(str(text)):
        user, sep, password = match.group(2).partition(":")
        found.append(password if sep else user)
    for match in _QUERY_PARAM.finditer(str(text)):
        _, name, value = match.groups()
        if is_secret_param(name):
            found.append(value)
    decoded = [unquote_plus(v) for v in found] + [unquote(v) for v in found]
    return [v for v in dict.fromkeys(found + decoded) if len(v) >= MIN_SECRET_LENGTH]


def secret_values(options: Any, under_secret: bool = False) -> list[str]:
    """Every secret string in ``options`` at any depth: values under secret-looking keys, and
    the secret parts of URLs anywhere. Takes storage options or a whole job dump alike."""
    found: list[str] = []
    if isinstance(options, Mapping):
        for key, value in options.items():
            secret = under_secret or any(w in str(key).lower() for w in SECRET_WORDS)
            found.extend(secret_values(value, secret))
    elif isinstance(options, (list, tuple)):
        for value in options:
            found.extend(secret_values(value, under_secret))
    elif isinstance(options, str):
        if under_secret and len(options) >= MIN_SECRET_LENGTH:
            found.append(options)
        found.extend(url_secrets(options))
    return list(dict.fromkeys(found))


def _spellings(secret: str) -> list[str]:
    """A secret as written, and as it appears once percent-encoded (in a URL, a log line)."""
    return list(dict.fromkeys([secret, quote(secret, safe=""), quote_plus(secret, safe="")]))


def scrub(text: str, secrets_in: Any = None) -> str:
    """``text`` with URL userinfo and secret query values masked, and every secret found in
    ``secrets_in`` (storage options, a job dump, a list of strings) replaced by '***'."""
    text = redact_url(str(text))
    if isinstance(secrets_in, (list, tuple)) and all(isinstance(s, str) for s in secrets_in):
        secrets = [s for s in secrets_in if len(s) >= MIN_SECRET_LENGTH]
    else:
        secrets = secret_values(secrets_in or {})
    spellings = {form for secret in secrets for form in _spellings(secret)}
    for secret in sorted(spellings, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact(value: Any) -> Any:
    """A copy with every value under a secret-looking key (and all storage options) as '***'
    and every URL's userinfo and secret query values masked: fit to log as params."""
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


KeyPath = list[Any]  # keys and list indices from the root to a value


def split_secrets(value: Any) -> tuple[Any, list[tuple[KeyPath, Any]]]:
    """(public, secrets): ``value`` with each secret masked as :func:`redact` does, and the
    (path, original value) of every place masked, so :func:`join_secrets` can restore them.

    The public part can travel where anything may be logged or persisted (Ray's
    ``train_loop_config``); the secrets go through a channel that is neither.
    """
    secrets: list[tuple[KeyPath, Any]] = []

    def walk(node: Any, path: KeyPath) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, child in node.items():
                if is_secret_key(key):
                    secrets.append(([*path, key], copy.deepcopy(child)))
                    out[key] = MASK
                else:
                    out[key] = walk(child, [*path, key])
            return out
        if isinstance(node, list):
            return [walk(child, [*path, i]) for i, child in enumerate(node)]
        if isinstance(node, str) and redact_url(node) != node:
            secrets.append((path, node))
            return redact_url(node)
        return node

    return walk(value, []), secrets


def join_secrets(public: Any, secrets: list[tuple[KeyPath, Any]]) -> Any:
    """The value :func:`split_secrets` split: ``public`` with each secret put back."""
    out = copy.deepcopy(public)
    for path, original in secrets:
        if not path:
            return copy.deepcopy(original)
        node = out
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = copy.deepcopy(original)
    return out
