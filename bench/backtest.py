"""Benchmark: ``backtest`` of 7 days at a 15 s step over the shipped rules, on a real Prometheus.

Prints one JSON object: wall seconds (median, min, max over several runs) and HTTP queries.
Target (issue 2): under 20 s, and queries that grow with the number of rules, not of steps --
shown by replaying 1 day and 7 days and comparing with what one instant query per rule per
step would cost. Prometheus caps a range query at 11,000 points per series, so a week is four
chunks per query; that is the only way steps enter the count.

Run: ``make bench`` (or ``.venv/bin/python bench/backtest.py --runs 5``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from watchdog import backtest, config, model, rules, timefmt
from watchdog.sources import prometheus as prometheus_source
from watchdog_lab import history, prometheus

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


async def replay_once(url: str, days: float, end: float) -> tuple[float, int, int, str | None]:
    settings = config.load(ROOT / "config" / "lavalink.yml")
    target = settings.target(None)
    rule_set = rules.load(target.rules, target.rule_variables)
    prom = settings.prometheus.model_copy(update={"url": url, "timeout": 60.0})
    source = prometheus_source.PrometheusSource(prom)
    started = time.perf_counter()
    try:
        replayed = await backtest.replay(
            source,
            target,
            rule_set.rules,
            settings.policy.to_policy(),
            start=end - days * DAY,
            end=end,
            step=15.0,
        )
    finally:
        source.close()
    wall = time.perf_counter() - started
    first = replayed.first.get(model.Verdict.ROLLBACK)
    return (
        wall,
        replayed.queries,
        replayed.evaluations,
        timefmt.format_instant(first) if first else None,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--scrape-interval", type=float, default=30.0)
    args = parser.parse_args()

    end = math.floor(time.time() / 3600) * 3600 - 6 * 3600
    start = end - args.days * DAY
    # A week with incidents in it, so the decision code has work: a slow day-2 afternoon, a
    # YouTube outage on day 4, and a crash loop in the last hours.
    faults = [
        history.Fault(history.FaultKind.LATENCY, start + 1.6 * DAY, start + 1.7 * DAY, 0.4),
        history.Fault(
            history.FaultKind.SOURCES_DOWN,
            start + 3.5 * DAY,
            start + 3.6 * DAY,
            sources=("youtube",),
        ),
        history.Fault(history.FaultKind.CRASH_LOOP, end - 3 * 3600, end, 45.0),
    ]
    rule_count = len(rules.load([ROOT / "rules" / "lavalink.yml"]).rules)
    with tempfile.TemporaryDirectory(prefix="rollback-watchdog-bench-") as temp:
        began = time.perf_counter()
        series = history.lavalink_history(
            start, end + 60, scrape_interval=args.scrape_interval, faults=faults
        )
        generated = time.perf_counter() - began
        began = time.perf_counter()
        data = prometheus.load_history(series, Path(temp))
        loaded = time.perf_counter() - began
        samples = sum(len(s.samples) for s in series)
        del series
        with prometheus.running_prometheus(data) as server:
            walls, queries, steps, first = [], 0, 0, None
            for _ in range(args.runs):
                wall, queries, steps, first = asyncio.run(replay_once(server.url, args.days, end))
                walls.append(wall)
            one_day_wall, one_day_queries, one_day_steps, _ = asyncio.run(
                replay_once(server.url, 1.0, end)
            )
    median = statistics.median(walls)
    report = {
        "benchmark": f"backtest {args.days:g} days at a 15 s step, shipped rules, real Prometheus",
        "rules": rule_count,
        "steps": steps,
        "wall_seconds": {
            "median": round(median, 3),
            "min": round(min(walls), 3),
            "max": round(max(walls), 3),
            "runs": [round(w, 3) for w in walls],
        },
        "http_queries": queries,
        "http_queries_1_day": one_day_queries,
        "steps_1_day": one_day_steps,
        "wall_seconds_1_day": round(one_day_wall, 3),
        "http_queries_if_one_instant_query_per_rule_per_step": steps * (rule_count + 2),
        "first_rollback": first,
        "history": {
            "samples": samples,
            "scrape_interval_seconds": args.scrape_interval,
            "generate_seconds": round(generated, 2),
            "backfill_seconds": round(loaded, 2),
        },
        "target": {"wall_seconds_under": 20.0, "met": median < 20.0},
        "python": sys.version.split()[0],
    }
    print(json.dumps(report, indent=2))
    return 0 if median < 20.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
