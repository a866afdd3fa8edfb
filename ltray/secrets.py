"""The one home for secrets: which keys hold them, and how to keep them out of what ltray writes.

Secrets reach ltray in three places: values under secret-looking keys (``storage_options``,
``aws_secret_access_key``, ...), the ``user:password@`` part of a URL, and token-like query
parameters of a URL. Params, tags, error messages and log lines pass through these functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "auth")
MASK = "***"

_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def is_secret_key(key: Any) -> bool:
    key = str(key).lower()
    return key == "storage_options" or any(word in key for word in SECRET_WORDS)


def redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part."""
    return _URL_USERINFO.sub(rf"\1{MASK}@", str(url))


def secret_values(options: Any, under_secret: bool = False) -> list[str]:
    """Every string value under a secret-looking key, at any depth."""
    found: list[str] = []
    if isinstance(options, Mapping):
        for key, value in options.items():
            secret = under_secret or any(w in str(key).lower() for w in SECRET_WORDS)
            found.extend(secret_values(value, secret))
    elif isinstance(options, (list, tuple)):
        for value in options:
            found.extend(secret_values(value, under_secret))
    elif under_secret and isinstance(options, str) and len(options) >= 3:
        found.append(options)
    return found


def scrub(text: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """``text`` with secret storage-option values and URL passwords replaced by '***'."""
    text = redact_url(str(text))
    for secret in sorted(secret_values(storage_options or {}), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact(value: Any) -> Any:
    """A copy with every value under a secret-looking key (and all storage options) as '***'."""
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
