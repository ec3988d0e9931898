"""Replay history through the real evaluation and decision: ``backtest``, ``check``, warm start.

One range query per rule over the window (chunked under Prometheus's point limit) gives the
same values an instant query would give at each step, so the number of HTTP queries grows with
the number of rules, not steps. Each step is then folded through ``evaluation.evaluate`` and
``decision.decide`` exactly as the daemon does, with a simulated clock and the mode forced to
observe: nothing is journaled and nothing acts.

The same replay serves ``check`` (the last step of a short window, so ``for`` durations are
honoured rather than reset) and the daemon's start (its alert memory picks up where Prometheus's
history says it was, so a restart of the watchdog does not restart every ``for`` timer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from watchdog import config, decision, evaluation, model, timefmt
from watchdog.sources import baseline, prometheus


@dataclass(frozen=True, slots=True)
class Change:
    """One change of verdict in a replay."""

    at: float
    verdict: model.Verdict
    score: float
    firing: tuple[str, ...]
    reason: str


@dataclass(slots=True)
class Replay:
    """The outcome of replaying a window: the changes and the final states."""

    target: str
    start: float
    end: float
    step: float
    evaluations: int = 0
    changes: list[Change] = field(default_factory=list)
    first: dict[model.Verdict, float] = field(default_factory=dict)
    memory: model.EvaluationMemory = field(default_factory=lambda: model.EMPTY_MEMORY)
    state: model.TargetState = field(default_factory=model.TargetState)
    last_evaluation: model.Evaluation | None = None
    last_decision: model.Decision | None = None
    queries: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``backtest --json`` contract (README), exactly."""

        def first(verdict: model.Verdict) -> str | None:
            at = self.first.get(verdict)
            return timefmt.format_instant(at) if at is not None else None

        return {
            "target": self.target,
            "start": timefmt.format_instant(self.start),
            "end": timefmt.format_instant(self.end),
            "step_seconds": float(self.step),
            "evaluations": self.evaluations,
            "timeline": [
                {
                    "at": timefmt.format_instant(change.at),
                    "verdict": change.verdict.value,
                    "score": float(change.score),
                    "firing": list(change.firing),
                }
                for change in self.changes
            ],
            "first": {
                "rollback": first(model.Verdict.ROLLBACK),
                "propose": first(model.Verdict.PROPOSE),
                "warn": first(model.Verdict.WARN),
            },
        }


async def replay(
    source: prometheus.PrometheusSource,
    target: config.TargetSettings,
    rules: Sequence[model.Rule],
    policy: model.Policy,
    *,
    start: float,
    end: float,
    step: float,
    state: model.TargetState | None = None,
    concurrency: int = 4,
) -> Replay:
    """Evaluate and decide at every ``step`` from ``start`` to ``end`` over stored history."""
    if step <= 0:
        raise ValueError("step must be > 0")
    if end < start:
        raise ValueError("end is before start")
    start = math.ceil(start)  # Prometheus's client sends whole seconds; keep steps aligned
    steps = int((end - start) // step) + 1
    requests_before = source.requests
    limit = asyncio.Semaphore(concurrency)

    async def fetch(query: str) -> prometheus.RangeResult:
        async with limit:
            return await source.range(query, start, start + (steps - 1) * step, step)

    queries = [target.presence, target.activation, *(rule.expr for rule in rules)]
    presence_raw, activation_raw, *rule_raw = await asyncio.gather(*(fetch(q) for q in queries))

    presence = _per_step(presence_raw, start, step, steps)
    activation = _per_step(activation_raw, start, step, steps)
    per_rule = [_per_step(raw, start, step, steps) for raw in rule_raw]

    result = Replay(target=target.name, start=start, end=start + (steps - 1) * step, step=step)
    memory = model.EMPTY_MEMORY
    current = state if state is not None else model.TargetState()
    previous: model.Verdict | None = None
    names = [rule.name for rule in rules]
    comparator = baseline.Comparator(target, policy.warmup, source)
    for index in range(steps):
        at = start + index * step
        observation = model.Observation(
            at=at,
            results=dict(zip(names, (column[index] for column in per_rule), strict=True)),
            presence=presence[index],
            activated_at=prometheus.activation_time(activation[index]),
        )
        evaluated, memory = evaluation.evaluate(target.name, rules, observation, memory)
        if comparator.enabled:  # against the fallback's baseline, as the daemon does
            activated = evaluated.activated_at or current.activated_at
            compared = await comparator.signals(at, activated, since=current.armed_at)
            evaluated = dataclasses.replace(evaluated, signals=evaluated.signals + compared)
        decided, current = decision.decide(evaluated, policy, current)
        if decided.verdict is not previous:
            result.changes.append(
                Change(at, decided.verdict, decided.score, decided.firing, decided.reason)
            )
            result.first.setdefault(decided.verdict, at)
            previous = decided.verdict
        result.last_evaluation, result.last_decision = evaluated, decided
    result.evaluations = steps
    result.memory = memory
    result.state = current
    result.queries = source.requests - requests_before
    return result


def _per_step(
    raw: prometheus.RangeResult, start: float, step: float, steps: int
) -> list[model.QueryResult]:
    """Turn a range result into the instant result of each step."""
    if raw.error is not None:
        failed = model.QueryResult(error=raw.error)
        return [failed] * steps
    columns: list[list[model.Point]] = [[] for _ in range(steps)]
    for series in raw.series:
        for ts, value in series.values.items():
            index = round((ts - start) / step)
            if 0 <= index < steps:
                columns[index].append(model.Point(series.labels, value))
    empty = model.QueryResult()
    return [model.QueryResult(points=tuple(c)) if c else empty for c in columns]


def lookback(rules: Sequence[model.Rule], interval: float) -> float:
    """How much history ``check`` and a warm start replay: the longest ``for`` and keep."""
    longest = max((r.for_seconds + r.keep_firing_for_seconds for r in rules), default=0.0)
    return longest + 2 * interval
