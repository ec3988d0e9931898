"""``check`` and ``backtest``: the rules and the policy evaluated against Prometheus, once
now or replayed over its history, exactly as the daemon evaluates them.

A Prometheus that does not answer is exit 3, as is every other thing a command needs that
does not answer; a verdict other than hold is ``check``'s exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from watchdog import backtest, config, model, rules, timefmt
from watchdog.cli.common import EXIT_FAILED, EXIT_OK, _fail, _print_json, _print_table, _unreachable
from watchdog.cli.parser import MAX_BACKTEST_STEPS
from watchdog.sources import prometheus


def check(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    target = settings.target(args.target)
    rule_set = rules.load(target.rules, target.rule_variables)
    if not settings.prometheus.enabled:
        return _fail("check: prometheus.enabled is false in the config: there is nothing to query")
    return asyncio.run(_check_async(settings, target, rule_set, as_json=args.json))


async def _check_async(
    settings: config.Settings,
    target: config.TargetSettings,
    rule_set: rules.RuleSet,
    *,
    as_json: bool,
) -> int:
    now = time.time()
    window = backtest.lookback(rule_set.rules, settings.interval)
    replayed = await _replayed(settings, target, rule_set, now - window, now, settings.interval)
    if isinstance(replayed, str):
        return _unreachable(f"cannot evaluate {target.name}: {replayed}")
    evaluated, decided = replayed.last_evaluation, replayed.last_decision
    if evaluated is None or decided is None:  # replay always runs >= 1 step
        return _fail(f"cannot evaluate {target.name}: nothing was evaluated")
    if as_json:
        _print_json(_check_json(evaluated, decided))
    else:
        _print_check(evaluated, decided)
    return EXIT_OK if decided.verdict is model.Verdict.HOLD else EXIT_FAILED


def _check_json(evaluated: model.Evaluation, decided: model.Decision) -> dict[str, Any]:
    return {
        "target": decided.target,
        "at": timefmt.format_instant(decided.at),
        "verdict": decided.verdict.value,
        "score": decided.score,
        "reason": decided.reason,
        "firing": list(decided.firing),
        "signals": [
            {
                "name": s.name,
                "severity": s.rule.severity.value,
                "category": s.rule.category.value,
                "weight": s.rule.weight,
                "state": s.state.value,
                "value": s.value if s.value is not None and s.value == s.value else None,
                "labels": dict(s.labels),
                "threshold": s.rule.threshold,
                "for_seconds": s.rule.for_seconds,
                "since": timefmt.format_instant(s.active_since) if s.active_since else None,
                "detail": s.detail,
            }
            for s in evaluated.signals
        ],
    }


def _print_check(evaluated: model.Evaluation, decided: model.Decision) -> None:
    print(
        f"target {decided.target} at {timefmt.format_instant(decided.at)}: "
        f"verdict {decided.verdict.value.upper()} (score {decided.score:g})"
    )
    print(f"reason: {decided.reason}")
    header = ("SIGNAL", "SEVERITY", "CATEGORY", "STATE", "VALUE", "THRESHOLD", "ACTIVE")
    rows = [header]
    for s in evaluated.signals:
        value = "" if s.value is None else f"{s.value:.4g}"
        # how long active at this evaluation (the JSON has the instant): short enough to fit
        seconds = round(decided.at - s.active_since) if s.active_since else 0
        active = (
            "" if not s.active_since else timefmt.format_duration(seconds) if seconds > 0 else "0s"
        )
        threshold = s.rule.threshold
        if s.rule.for_seconds and "for" not in threshold:
            threshold += f" for {timefmt.format_duration(s.rule.for_seconds)}"
        rows.append(
            (
                s.name,
                s.rule.severity.value,
                s.rule.category.value,
                s.state.value + (f" ({s.detail})" if s.detail else ""),
                value,
                threshold,
                active,
            )
        )
    # the state's detail and the threshold's words give way; names, values and states stay
    _print_table(rows, cut={3: len("pending"), 5: len("THRESHOLD")})


def backtest_command(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    if args.prometheus:
        try:
            prom = config.PrometheusSettings.model_validate(
                {**settings.prometheus.model_dump(), "url": args.prometheus}
            )
        except ValueError as exc:
            return _fail(f"--prometheus: {exc}")
        settings = settings.model_copy(update={"prometheus": prom})
    target = settings.target(args.target)
    try:
        start = timefmt.parse_instant(args.start)
        end = timefmt.parse_instant(args.end)
        step = timefmt.parse_duration(args.step)
    except ValueError as exc:
        return _fail(str(exc))
    if step < 1 or step != int(step):
        return _fail("--step must be a whole number of seconds, at least 1s")
    if end < start:
        return _fail("--end is before --start")
    if (end - start) / step > MAX_BACKTEST_STEPS:
        return _fail(
            f"{(end - start) / step:.0f} steps is too many (at most {MAX_BACKTEST_STEPS}): "
            "shorten the window or use a longer --step"
        )
    rule_set = rules.load(target.rules, target.rule_variables)
    return asyncio.run(_backtest_async(settings, target, rule_set, start, end, step, args.json))


async def _backtest_async(
    settings: config.Settings,
    target: config.TargetSettings,
    rule_set: rules.RuleSet,
    start: float,
    end: float,
    step: float,
    as_json: bool,
) -> int:
    replayed = await _replayed(settings, target, rule_set, start, end, step)
    if isinstance(replayed, str):
        return _unreachable(f"cannot backtest: {replayed}")
    if as_json:
        print(json.dumps(replayed.to_json()))
    else:
        print_timeline(replayed)
    return EXIT_OK


def print_timeline(replayed: backtest.Replay) -> None:
    """The human form of a backtest: one line per change of verdict, with its reason."""
    print(
        f"target {replayed.target}: {replayed.evaluations} evaluations every "
        f"{timefmt.format_duration(replayed.step)} from {timefmt.format_instant(replayed.start)} "
        f"to {timefmt.format_instant(replayed.end)} ({replayed.queries} queries, mode observe)"
    )
    for change in replayed.changes:
        print(
            f"  {timefmt.format_instant(change.at)}  {change.verdict.value.upper():<12} "
            f"score {change.score:g}  {change.reason}"
        )
    for verdict in (model.Verdict.ROLLBACK, model.Verdict.PROPOSE, model.Verdict.WARN):
        at = replayed.first.get(verdict)
        print(f"  first {verdict.value}: {timefmt.format_instant(at) if at else 'never'}")


async def _replayed(
    settings: config.Settings,
    target: config.TargetSettings,
    rule_set: rules.RuleSet,
    start: float,
    end: float,
    step: float,
) -> backtest.Replay | str:
    """The rules and policy replayed over ``[start, end]``, or why Prometheus cannot say."""
    source = prometheus.PrometheusSource(settings.prometheus)
    try:
        problem = await source.ready()
        if problem is not None:
            return problem
        return await backtest.replay(
            source,
            target,
            rule_set.rules,
            settings.policy.to_policy(),
            start=start,
            end=end,
            step=step,
        )
    finally:
        source.close()
