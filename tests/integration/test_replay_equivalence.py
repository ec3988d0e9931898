"""`backtest` rests on one claim: a range query's value at each step is what an instant query at
that step returns. Checked here on the real Prometheus, rule by rule, at sampled steps of the
crash-loop and latency scenarios (with rate windows, predict_linear, changes and histograms)."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.integration.conftest import FAULT_AT, ROOT, World
from watchdog import backtest, config, rules
from watchdog.sources import prometheus

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("scenario", ["crash_loop", "latency", "warnings"])
async def test_range_steps_equal_instant_queries(world: World, scenario: str) -> None:
    settings = config.load(ROOT / "config" / "lavalink.yml")
    target = settings.target(None)
    rule_set = rules.load(target.rules).rules
    source = prometheus.PrometheusSource(settings.prometheus.model_copy(update={"url": world.url}))
    start = world.starts[scenario] + FAULT_AT - 600
    step, steps = 15.0, 160
    ranged = await asyncio.gather(
        *(source.range(r.expr, start, start + (steps - 1) * step, step) for r in rule_set)
    )
    per_rule = [backtest._per_step(result, start, step, steps) for result in ranged]
    chosen = random.Random(scenario).sample(range(steps), 12)  # noqa: S311 - not a secret
    compared = 0
    for index in chosen:
        at = start + index * step
        instant = await asyncio.gather(*(source.instant(r.expr, at) for r in rule_set))
        for rule, column, now in zip(rule_set, per_rule, instant, strict=True):
            assert now.ok and column[index].ok, rule.name
            expected = sorted((p.labels, round(p.value, 9)) for p in now.points)
            actual = sorted((p.labels, round(p.value, 9)) for p in column[index].points)
            assert actual == expected, (rule.name, at)
            compared += len(expected)
    assert compared > 0  # some rules had series at the sampled steps
    source.close()
