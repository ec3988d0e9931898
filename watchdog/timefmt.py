"""Durations and instants as people write them, parsed one way everywhere.

Durations use Prometheus's syntax (``15s``, ``5m``, ``1h30m``) so a rules file, a config file and
the command line agree; instants are RFC 3339 (``2026-11-25T10:00:00Z``) or Unix seconds.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}
_DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def parse_duration(text: str | float | int) -> float:
    """Seconds in a Prometheus duration (``1h30m``) or a plain number of seconds.

    Raises ``ValueError`` naming the text when it is neither.
    """
    if isinstance(text, bool):  # a bool is an int to Python, never a duration to a person
        raise ValueError(f"not a duration: {text!r}")  # noqa: TRY004 - pydantic wants ValueError
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"not a duration: {text!r} (must be a finite number >= 0)")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"not a duration: {text!r} (use e.g. 15s, 5m, 1h30m, or seconds)")  # noqa: TRY004 - pydantic wants ValueError
    stripped = text.strip()
    if stripped and _DURATION.match(stripped):
        return sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(stripped))
    try:
        seconds = float(stripped)
    except ValueError:
        raise ValueError(
            f"not a duration: {text!r} (use e.g. 15s, 5m, 1h30m, or seconds)"
        ) from None
    return parse_duration(seconds)


def format_duration(seconds: float) -> str:
    """The shortest Prometheus-style spelling of whole seconds (``90`` -> ``1m30s``)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    remaining = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


LATEST_INSTANT = 4102444800.0  # 2100-01-01: beyond it, Unix seconds were probably milliseconds


def parse_instant(text: str) -> float:
    """Unix seconds from RFC 3339 (``2026-11-25T10:00:00Z``) or Unix seconds."""
    stripped = text.strip()
    try:
        seconds = float(stripped)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or not 0 <= seconds <= LATEST_INSTANT:
            raise ValueError(
                f"not a time: {text!r} (Unix seconds between 0 and {LATEST_INSTANT:.0f}; "
                "milliseconds?)"
            )
        return seconds
    try:
        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use RFC 3339 like 2026-11-25T10:00:00Z, or Unix seconds)"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(f"not a time: {text!r} has no timezone (add Z or +00:00)")
    return parsed.timestamp()


def format_instant(at: float) -> str:
    """RFC 3339 in UTC with a ``Z``; fractions of a second only when there are some."""
    moment = datetime.fromtimestamp(at, tz=UTC)
    if moment.microsecond:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
