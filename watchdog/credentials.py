"""Secrets from files or the environment, read one way everywhere, compared in constant time.

The config file never holds a secret; it names the file (a systemd credential works: it is a
file under ``$CREDENTIALS_DIRECTORY``) or the environment variable that does. Every reader of a
password or token goes through ``read_secret`` so a missing one fails the same clear way, and
every check of a presented token goes through ``matches``, which compares digests so timing
says nothing about the token's length or prefix. ``identify`` names the operator a token
belongs to, comparing it with every operator's token so the time says nothing about which.
``file_problems`` says what is wrong with a secret file as it sits on disk (``validate`` and
the daemon's start report it): missing, unreadable, empty, or open to other users.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from watchdog import errors, logs


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


DIGEST_PREFIX = "sha256:"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def matches(presented: str, expected: str) -> bool:
    """Whether a presented secret is the expected one. Both are hashed first, so the comparison
    takes the same time whatever their lengths or contents; bytes that are not UTF-8 (a header
    decoded with surrogateescape) simply do not match. ``expected`` may be the token's SHA-256
    (``sha256:<hex>``, what ``printf %s TOKEN | sha256sum`` prints): then whoever reads the
    daemon's copy, root included, still cannot present the token itself."""
    stored = _DIGEST.fullmatch(expected)
    wanted = bytes.fromhex(stored.group(1)) if stored else _digest(expected)
    return hmac.compare_digest(_digest(presented), wanted)


def is_digest(secret: str) -> bool:
    """Whether a stored token is a digest (``sha256:<hex>``), which no client can present."""
    return _DIGEST.fullmatch(secret) is not None


def same_token(one: str, other: str) -> bool:
    """Whether two stored tokens (plain or digests) stand for the same token."""
    if is_digest(one) and is_digest(other):
        return hmac.compare_digest(one, other)
    if is_digest(one):
        return matches(other, one)
    return matches(one, other)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, slots=True, repr=False)  # never printed, not even in a traceback
class Identity:
    """One operator of the API: a name and the token that proves it."""

    name: str
    token: str


def identify(presented: str, identities: Sequence[Identity]) -> str | None:
    """The name whose token was presented, or None. Every token is compared, whichever
    matches: the time taken says nothing about who."""
    found = None
    for identity in identities:
        if matches(presented, identity.token) and found is None:
            found = identity.name
    return found


@dataclass(frozen=True, slots=True)
class FileProblem:
    """Something wrong with a secret file: ``fatal`` ones stop the daemon from starting."""

    message: str
    fatal: bool


def short(what: str, length: int) -> FileProblem:
    """A secret too short to be safe, or to be redacted from the log by its value."""
    return FileProblem(
        f"{what} is {length} characters long: guessable, and too short for the log to redact "
        f"it by value (use at least {logs.MIN_SECRET}, better 32 random ones)",
        False,
    )


def file_problems(path: Path, what: str) -> list[FileProblem]:
    """What is wrong with the secret file ``path`` as it sits on disk: missing, not a file,
    unreadable or empty (fatal); readable or writable by users other than its owner and group,
    or writable by its group (a warning: a token others can read is a token others have)."""
    hint = (
        " (systemd credentials exist only while the unit runs: validate --syntax-only)"
        if str(path).startswith("/run/credentials/")
        else ""
    )
    try:
        found = path.stat()
    except FileNotFoundError:
        return [FileProblem(f"the {what} file {path} does not exist{hint}", True)]
    except OSError as exc:
        return [FileProblem(f"the {what} file {path} cannot be read: {exc.strerror}", True)]
    if not stat.S_ISREG(found.st_mode):
        return [FileProblem(f"the {what} file {path} is not a regular file", True)]
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return [FileProblem(f"the {what} file {path} cannot be read: {exc.strerror}", True)]
    except UnicodeDecodeError:
        return [FileProblem(f"the {what} file {path} is not UTF-8 text", True)]
    problems = [FileProblem(f"the {what} file {path} is empty", True)] if not value else []
    if value and len(value) < logs.MIN_SECRET:
        problems.append(short(f"the {what} in {path}", len(value)))
    mode = stat.S_IMODE(found.st_mode)
    if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        problems.append(
            FileProblem(
                f"the {what} file {path} is open to other users (mode {mode:04o}): "
                f"chmod 600 {path} (or 640 for a group that needs it)",
                False,
            )
        )
    return problems


def service_secret(path: Path | None, variable: str | None) -> str:
    """The guarded service's own secret (Lavalink's password, an HTTP service's token), from
    its file or environment variable; '' when none is configured."""
    return read_secret(path, variable, "service password") or ""
