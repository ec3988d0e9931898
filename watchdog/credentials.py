"""Secrets from files or the environment, read one way everywhere, compared in constant time.

The config file never holds a secret; it names the file (a systemd credential works: it is a
file under ``$CREDENTIALS_DIRECTORY``) or the environment variable that does. Every reader of a
password or token goes through ``read_secret`` so a missing one fails the same clear way, and
every check of a presented token goes through ``matches``, which compares digests so timing
says nothing about the token's length or prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from watchdog import errors


def read_secret(
    path: Path | None,
    variable: str | None,
    what: str,
    *,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The secret from ``path`` or ``$variable`` (stripped), None if neither is configured;
    ``ConfigError`` naming ``what`` if the one configured cannot be read or is empty."""
    env = os.environ if environ is None else environ
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise errors.ConfigError(
                f"cannot read the {what} file {path}: {exc.strerror}"
            ) from None
        if not value:
            raise errors.ConfigError(f"the {what} file {path} is empty")
        return value
    if variable is not None:
        value = env.get(variable, "").strip()
        if not value:
            raise errors.ConfigError(f"the {what} variable ${variable} is not set or empty")
        return value
    return None


def matches(presented: str, expected: str) -> bool:
    """Whether a presented secret is the expected one. Both are hashed first, so the comparison
    takes the same time whatever their lengths or contents; bytes that are not UTF-8 (a header
    decoded with surrogateescape) simply do not match."""
    return hmac.compare_digest(_digest(presented), _digest(expected))


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
