"""Benchmark: a flood of distinct alert names -- what it costs the daemon, before and after.

The attack trial sent 25 000 distinct alert names to ``POST /alertmanager``; each became a
signal of the only target, with series in ``/metrics`` that never went away (16.5 MB,
+148 MB of memory, every tick 8x slower). This measures the same flood on a daemon process
(as ``bench/ingest.py`` runs it: observe mode, the shipped rules, a dead Prometheus, a 2 s
interval), twice: the names as another team's alerts (``job="postgres"``, with severity and
category labels: the trial's case), then as alerts that do name the target
(``rollback_target="lavalink"``). For each: resident memory, ``/metrics`` size and the
evaluation time (the ``rollback_watchdog_evaluation_duration_seconds`` histogram over the
ticks after the flood), against the same daemon idle before it.

``--code DIR`` runs another checkout's watchdog (``git worktree add DIR <commit>``), so the
figures before and after a change come from one script. Prints one JSON object.
Run: ``.venv/bin/python bench/flood.py [--code DIR] [--names 25000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from ingest import HEADERS, ROOT, Daemon, delivery, now_rfc3339

KINDS = {
    "foreign": {"job": "postgres", "instance": "db-1:5432"},
    "routed": {"rollback_target": "lavalink"},
}


def flood_alert(name: str, labels: dict[str, str], starts: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {
            "alertname": name,
            "severity": "critical",
            "rollback_category": "instability",
            **labels,
        },
        "annotations": {"summary": f"{name} is down"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": hashlib.sha256(name.encode()).hexdigest()[:16],
    }


def ticks(daemon: Daemon) -> tuple[float, float, float]:
    """The evaluation-duration histogram's (sum, count) so far, and the ticks that timed out
    (they never reach the histogram)."""
    text = httpx.get(f"{daemon.url}/metrics", timeout=60).text
    found = {}
    for name in (
        r"rollback_watchdog_evaluation_duration_seconds_sum\{[^}]*\}",
        r"rollback_watchdog_evaluation_duration_seconds_count\{[^}]*\}",
        r'rollback_watchdog_source_errors_total\{[^}]*source="tick_timeout"[^}]*\}',
    ):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        found[name] = float(match.group(1)) if match else 0.0
    total, count, timeouts = found.values()
    return total, count, timeouts


def tick_ms(daemon: Daemon, seconds: float) -> dict[str, float]:
    """Over the next ``seconds``: the ticks that finished, their mean time, and those that
    timed out (a 2 s interval would run seconds / 2)."""
    total, count, timeouts = ticks(daemon)
    time.sleep(seconds)
    total2, count2, timeouts2 = ticks(daemon)
    return {
        "ticks": count2 - count,
        "mean_ms": round(1000 * (total2 - total) / max(count2 - count, 1), 2),
        "timed_out": timeouts2 - timeouts,
    }


def state(daemon: Daemon, settle: float) -> dict[str, Any]:
    began = time.perf_counter()
    body = httpx.get(f"{daemon.url}/metrics", timeout=60).content
    scrape = time.perf_counter() - began
    series = body.count(b"\nrollback_watchdog_signal_state{")
    ticked = tick_ms(daemon, settle)
    return {
        "rss_mb": round(daemon.rss_bytes() / 2**20, 1),
        "metrics_kb": round(len(body) / 1024, 1),
        "metrics_scrape_ms": round(scrape * 1000, 1),
        "signal_series": series,
        "ticks": ticked["ticks"],
        "tick_ms": ticked["mean_ms"],
        "ticks_timed_out": ticked["timed_out"],
    }


def flood(daemon: Daemon, names: list[str], labels: dict[str, str], batch: int) -> float:
    """Send every name once; seconds it took to have them all answered."""
    starts = now_rfc3339()
    began = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for first in range(0, len(names), batch):
            alerts = [flood_alert(n, labels, starts) for n in names[first : first + batch]]
            answer = client.post(
                f"{daemon.url}/alertmanager", content=delivery(alerts), headers=HEADERS
            )
            if answer.status_code != 200:
                raise SystemExit(f"refused: {answer.status_code} {answer.text[:200]}")
    return round(time.perf_counter() - began, 1)


def run(code: Path, kind: str, count: int, batch: int, settle: float, workdir: Path) -> dict:
    daemon = Daemon(workdir / kind, interval="2s", code=code, alertmanager="")
    try:
        daemon.start()
        time.sleep(settle)
        idle = state(daemon, settle)
        names = [f"FloodAlert{index:05d}" for index in range(count)]
        sent_s = flood(daemon, names, KINDS[kind], batch)
        time.sleep(settle)  # the alerts are kept and the next evaluations take them
        flooded = state(daemon, settle)
    finally:
        daemon.stop()
    return {"idle": idle, "flooded": flooded, "sent_seconds": sent_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to run")
    parser.add_argument("--names", type=int, default=25000, help="distinct alert names")
    parser.add_argument("--batch", type=int, default=500, help="alerts per delivery")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds per measurement")
    parser.add_argument("--runs", type=int, default=1, help="repeat each kind")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="flood-") as scratch:
        for run_index in range(args.runs):
            for kind in KINDS:
                print(f"{kind} flood, run {run_index + 1} ...", file=sys.stderr, flush=True)
                where = Path(scratch) / f"run{run_index}"
                results[kind].append(
                    run(args.code, kind, args.names, args.batch, args.settle, where)
                )

    def median(kind: str, phase: str, key: str) -> float:
        return statistics.median(r[phase][key] for r in results[kind])

    report = {
        "benchmark": "alert-name-flood",
        "code": str(args.code.resolve()),
        "names": args.names,
        "runs": results,
        "median": {
            kind: {
                phase: {
                    key: median(kind, phase, key)
                    for key in (
                        "rss_mb",
                        "metrics_kb",
                        "metrics_scrape_ms",
                        "signal_series",
                        "ticks",
                        "tick_ms",
                        "ticks_timed_out",
                    )
                }
                for phase in ("idle", "flooded")
            }
            for kind in KINDS
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
