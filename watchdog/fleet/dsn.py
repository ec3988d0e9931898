"""The fleet DSN: read from a file or the environment (never the config), checked, and taken
apart only to know which parts are secret (the log redacts the password alone too)."""

from __future__ import annotations

from urllib.parse import urlsplit

from watchdog import config, credentials, errors

MISSING_EXTRA = (
    "fleet mode needs PostgreSQL's driver: pip install 'rollback-watchdog[fleet]' (psycopg 3)"
)


def read(settings: config.FleetSettings) -> str:
    """The DSN, checked; ``ConfigError`` naming what is wrong (never quoting it)."""
    found = credentials.read_secret(settings.dsn_file, settings.dsn_env, "fleet DSN")
    if found is None:  # the settings require one of the two
        raise errors.ConfigError("fleet: give dsn_file or dsn_env")
    secret_parts(found)
    return found


def secret_parts(dsn: str) -> list[str]:
    """The parts of a DSN that must never be logged: the whole of it and its password."""
    try:
        from psycopg import conninfo
    except ImportError:
        raise errors.ConfigError(MISSING_EXTRA) from None
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except Exception:  # the driver's message quotes the string: never pass it on
        raise errors.ConfigError(
            "the fleet DSN is not a libpq connection string or postgresql:// URI"
        ) from None
    secret = [dsn]
    if parts.get("password"):
        secret.append(str(parts["password"]))
    written = urlsplit(dsn).password if "://" in dsn else None
    if written and written not in secret:  # a URI's password as written (percent-encoded)
        secret.append(written)
    return secret
