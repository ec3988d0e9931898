"""Write synthetic time series as OpenMetrics text for promtool to backfill into Prometheus.

Tests and the benchmark need history inside a real Prometheus; backfilling from this text format is
the only supported way to put past samples there. The writer streams, because a week of scraped
history is tens of megabytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True, slots=True)
class Series:
    """One time series: the sample name, its labels and its samples in time order."""

    name: str  # full sample name, e.g. "up", "x_bucket", "y_total"
    labels: tuple[tuple[str, str], ...]  # sorted (name, value) pairs
    samples: tuple[tuple[float, float], ...]  # (unix seconds, value), strictly increasing time

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        names = [name for name, _ in self.labels]
        if names != sorted(names) or len(set(names)) != len(names):
            raise ValueError(f"labels of {self.name} must be sorted and unique: {names}")
        for name in names:
            # "__name__" would clash with the sample name; other "__" names are reserved.
            if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"invalid label name {name!r} on {self.name}")

    def label(self, name: str) -> str | None:
        """The value of label `name`, or None when the series does not have it."""
        for label_name, value in self.labels:
            if label_name == name:
                return value
        return None


def escape_label_value(value: str) -> str:
    """Escape a label value the way the OpenMetrics text format requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """Format a sample value so that parsing it gives back the same float."""
    if value - value == 0.0:  # finite; checked first because nearly every value is
        return repr(float(value))
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def format_timestamp(seconds: float) -> str:
    """Format a timestamp in seconds that Prometheus reads back as the same whole millisecond.

    Prometheus stores milliseconds and converts with a truncating `int64(ts * 1000)`, so the text
    is chosen to make that product land exactly on the intended millisecond.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"timestamp must be finite, got {seconds!r}")
    millis = round(seconds * 1000)
    if millis % 1000 == 0:
        return str(millis // 1000)
    candidate = millis / 1000
    # Nudge upwards until the truncating conversion no longer falls one millisecond short.
    while math.floor(candidate * 1000) < millis:
        candidate = math.nextafter(candidate, math.inf)
    return repr(candidate)


def _series_prefix(series: Series) -> str:
    if not series.labels:
        return series.name + " "
    pairs = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in series.labels)
    return f"{series.name}{{{pairs}}} "


def _series_lines(series: Series, timestamp_text: dict[float, str]) -> Iterator[str]:
    prefix = _series_prefix(series)
    previous = -math.inf
    for seconds, value in series.samples:
        if not seconds > previous:
            raise ValueError(
                f"samples of {prefix.strip()} are not strictly increasing in time at {seconds!r}"
            )
        previous = seconds
        # Many series share one scrape timestamp: format each timestamp once.
        stamp = timestamp_text.get(seconds)
        if stamp is None:
            stamp = timestamp_text[seconds] = format_timestamp(seconds)
        yield f"{prefix}{format_value(value)} {stamp}\n"


def write_openmetrics(series: Iterable[Series], out: Path) -> int:
    """Stream `series` to `out` as OpenMetrics text and return the number of samples written.

    No `# TYPE` lines are written: every family is then of type unknown, which promtool accepts for
    any sample name and which spares us the counter `_total` naming rules.
    """
    timestamp_text: dict[float, str] = {}
    written = 0
    with out.open("w", encoding="utf-8", newline="\n") as stream:
        for one in series:
            stream.writelines(_series_lines(one, timestamp_text))
            written += len(one.samples)
        stream.write("# EOF\n")
    return written
