"""Profiles: what the core needs to know about one kind of guarded service (``base.Profile``).

``get`` names the profile a target's ``profile:`` selects; ``lavalink`` (the first, and the
default) and ``http`` (any service with a health endpoint) ship. A new profile is a package
here with a class satisfying ``base.Profile``, a ``defaults.yml`` and a line in ``get``.
"""

from __future__ import annotations

from watchdog import errors
from watchdog.profiles.base import Profile


def get(name: str) -> Profile:
    """The profile called ``name``; ``ConfigError`` if there is none."""
    if name == "lavalink":
        from watchdog.profiles.lavalink import Lavalink

        return Lavalink()
    if name == "http":
        from watchdog.profiles.http import Http

        return Http()
    raise errors.ConfigError(f"unknown profile {name!r} (known: http, lavalink)")
