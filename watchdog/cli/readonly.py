"""The commands that read and check: validate, check, status, report, backtest, rules, and the
two that run things without changing a service (the daemon, the demo).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from watchdog import (
    backtest,
    config,
    configcheck,
    errors,
    journal,
    logs,
    model,
    report,
    rules,
    runtime,
    timefmt,
    yamlsrc,
)
from watchdog.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, _fail, _print_table
from watchdog.cli.parser import MAX_BACKTEST_STEPS
from watchdog.sources import prometheus


def _validate(args: argparse.Namespace) -> int:
    """Every problem of every file at once, and "OK" only when there is none (exit 2 if any)."""
    paths: list[Path] = list(args.paths)
    if args.config is not None:
        paths.insert(0, args.config)
    if not paths:
        return _fail("validate: give a config file (--config) or rules files")
    problems: list[str] = []
    warnings: list[str] = []
    report: list[str] = []
    for path in paths:
        try:
            document = yamlsrc.load_file(path, error=errors.InputError)
        except errors.InputError as exc:
            problems.append(str(exc))
            continue
        if isinstance(document.value, dict) and "groups" in document.value:
            _validate_rules([path], problems, report)
            continue
        try:
            settings = config.load(path)
        except errors.InputError as exc:
            problems.append(str(exc))
            continue
        report.append(
            f"{path}: config OK: mode {settings.mode.value}, {len(settings.targets)} target(s)"
        )
        for target in settings.targets:
            report.append(
                f"  target {target.name}: {target.primary.unit} -> {target.fallback.unit}"
            )
            for rules_path in target.rules:
                _validate_rules([rules_path], problems, report, indent="    ", target=target)
            if len(target.rules) > 1:  # one alert name in two files: only seen together
                try:
                    rules.load(target.rules, target.rule_variables)
                except errors.RulesError as exc:
                    problems += [line for line in str(exc).splitlines() if line not in problems]
        if not args.syntax_only:
            for found in configcheck.problems(settings):
                (problems if found.fatal else warnings).append(f"{path}: {found.message}")
    problems = list(dict.fromkeys(problems))  # a rules file two targets share: said once
    for line in dict.fromkeys(warnings):
        print(f"warning: {line}", file=sys.stderr)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        print(
            f"{len(problems)} problem(s) found; nothing is OK until all are fixed", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    for line in report:
        print(line)
    if args.syntax_only:
        print("(--syntax-only: the secrets and files the config names were not checked)")
    return EXIT_OK


def _validate_rules(
    paths: list[Path],
    problems: list[str],
    report: list[str],
    *,
    indent: str = "",
    target: config.TargetSettings | None = None,
) -> None:
    try:
        rule_set = rules.load(paths, target.rule_variables if target is not None else None)
    except errors.RulesError as exc:
        problems.extend(str(exc).splitlines())
        return
    for path in paths:
        report.extend(_rules_lines(path, rule_set, indent=indent))


def _rules_lines(path: Path, rule_set: rules.RuleSet, *, indent: str = "") -> list[str]:
    critical = sum(1 for r in rule_set.rules if r.severity is model.Severity.CRITICAL)
    lines = [
        f"{indent}{path}: rules OK: {len(rule_set.rules)} alert rules "
        f"({critical} critical, {len(rule_set.rules) - critical} warning)"
    ]
    lines += [f"{indent}  note: {note}" for note in rule_set.notes]
    return lines


def _check(args: argparse.Namespace) -> int:
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
    source = prometheus.PrometheusSource(settings.prometheus)
    try:
        problem = await source.ready()
        if problem is not None:
            return _fail(f"cannot evaluate {target.name}: {problem}")
        now = time.time()
        window = backtest.lookback(rule_set.rules, settings.interval)
        replayed = await backtest.replay(
            source,
            target,
            rule_set.rules,
            settings.policy.to_policy(),
            start=now - window,
            end=now,
            step=settings.interval,
        )
    finally:
        source.close()
    evaluated, decided = replayed.last_evaluation, replayed.last_decision
    if evaluated is None or decided is None:  # replay always runs >= 1 step
        return _fail(f"cannot evaluate {target.name}: nothing was evaluated")
    if as_json:
        print(json.dumps(_check_json(evaluated, decided), indent=2))
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
    header = ("SIGNAL", "SEVERITY", "CATEGORY", "STATE", "VALUE", "THRESHOLD", "SINCE")
    rows = [header]
    for s in evaluated.signals:
        value = "" if s.value is None else f"{s.value:.4g}"
        since = timefmt.format_instant(s.active_since) if s.active_since else ""
        threshold = s.rule.threshold
        if s.rule.for_seconds and "for" not in threshold:
            threshold += f" for {timefmt.format_duration(s.rule.for_seconds)}"
        rows.append(
            (
                s.name,
                s.rule.severity.value,
                s.rule.category.value,
                s.state.value + (f" ({s.detail[:60]})" if s.detail else ""),
                value,
                threshold,
                since,
            )
        )
    _print_table(rows)


def _status(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    store = journal.Journal.open_existing(settings.state_dir)
    try:
        report = store.status([target.name for target in settings.targets])
        unrouted = store.unrouted_status()
    finally:
        store.close()
    if args.json:
        document = {"mode": settings.mode.value, "targets": report, "unrouted_alerts": unrouted}
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(f"mode: {settings.mode.value}   journal: {settings.state_dir / journal.DATABASE_NAME}")
    for item in report:
        print(f"\ntarget {item['target']}: {'ARMED' if item['armed'] else 'DISARMED'}")
        if item["committed_at"] is not None:
            print(
                f"  release committed at {timefmt.format_instant(item['committed_at'])}: "
                "a rollback is proposed to a human, never automatic, until the next deploy"
            )
        last = item["last_change"]
        if last:
            print(
                f"  verdict {last['verdict']} since {timefmt.format_instant(last['at'])}: "
                f"{last['reason']}"
            )
        for incident in item["incidents"]:
            closed = (
                f" .. {timefmt.format_instant(incident['closed_at'])}"
                if incident["closed_at"]
                else ""
            )
            print(
                f"  incident #{incident['id']} {incident['status']} {incident['verdict']} "
                f"{timefmt.format_instant(incident['opened_at'])}{closed}"
            )
        for run in item["runs"]:
            print(
                f"  run #{run['id']} {run['status'].upper()} ({run['trigger']} by "
                f"{run['initiated_by']}, {timefmt.format_instant(run['started_at'])}): "
                f"{run['outcome'] or run['reason']}"
            )
            for step in run["steps"]:
                print(f"    {step['name']:<15} {step['status']:<8} {step['detail']}")
        for made in item["decisions"]:
            print(
                f"  decision {timefmt.format_instant(made['at'])} {made['action']} "
                f"({made['mode']}): {made['outcome']}"
            )
        for asked in item["approvals"]:
            if asked["status"] == "pending":
                print(
                    f"  approval #{asked['id']} PENDING ({len(asked['approved_by'])} of "
                    f"{asked['required']}) until {timefmt.format_instant(asked['expires_at'])}: "
                    f"{asked['reason']}\n    approve: rollback-watchdog approve {asked['id']}"
                    f"   deny: rollback-watchdog deny {asked['id']}"
                )
            else:
                print(f"  approval #{asked['id']} {asked['status']}: {asked['outcome']}")
    if unrouted["kept"]:
        print(f"\nunrouted alerts (no decision): {unrouted['kept']} kept; the latest:")
        for one in unrouted["latest"]:
            print(
                f"  {one['alertname'] or '(no alertname)'} {one['status']}, "
                f"{one['reason']}: {one['detail']} "
                f"(last {timefmt.format_instant(one['last_seen'])})"
            )
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    if not re.fullmatch(r"[1-9][0-9]{0,17}", args.run):
        return _fail(f"{args.run!r} is not a run number (see `status`)")
    store = journal.Journal.open_existing(settings.state_dir)
    try:
        data = report.gather(store, int(args.run))
    except KeyError:
        return _fail(f"there is no run #{args.run} in {store.path} (see `status`)")
    finally:
        store.close()
    print(report.build(data), end="")
    return EXIT_OK


def _backtest(args: argparse.Namespace) -> int:
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
    source = prometheus.PrometheusSource(settings.prometheus)
    try:
        problem = await source.ready()
        if problem is not None:
            return _fail(f"cannot backtest: {problem}")
        replayed = await backtest.replay(
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


def _rules(args: argparse.Namespace) -> int:
    """The target's rules files as Prometheus must load them: a template's ``${...}`` filled
    in with the target's names, checked as the watchdog checks them."""
    settings = config.load(args.config)
    target = settings.target(args.target)
    rules.load(target.rules, target.rule_variables)  # every problem, exit 2, before output
    rendered = [
        rules.render(path.read_text(encoding="utf-8"), target.rule_variables, str(path))
        for path in target.rules
    ]
    sources = ", ".join(str(path) for path in target.rules)
    print(f"# {sources}, rendered for target {target.name} by rollback-watchdog rules")
    if len(rendered) == 1:
        print(rendered[0], end="")  # as written, comments and all
        return EXIT_OK
    # one file for Prometheus: every file's groups in one list (a second `groups:` key would
    # be a YAML error); the comments stay in the sources
    groups = [group for text in rendered for group in (yaml.safe_load(text) or {})["groups"]]
    names = [str(group.get("name")) for group in groups]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # Prometheus refuses a file with a group name twice
        return _fail(f"rules: group name {', '.join(repeated)} in more than one of {sources}")
    print(yaml.safe_dump({"groups": groups}, sort_keys=False, allow_unicode=True), end="")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    for target in settings.targets:  # fail fast, with exit 2, before anything starts
        rules.load(target.rules, target.rule_variables)
    logs.configure(level=args.log_level)
    asyncio.run(runtime.run(settings, config_path=args.config))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    # The demo's stage is the lab's (simulators, sandbox systemd): a separate distribution that
    # is never in the wheel, so it is looked up by name, and its absence is bad input.
    try:
        lab = importlib.import_module("watchdog_lab.demo" if args.replay else "watchdog_lab.live")
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("watchdog_lab"):
            raise
        print(
            "the demo needs the lab (simulators and the sandbox systemd), which is not part of "
            "the installed package: from a clone of the repository, run `make demo`, or "
            "`pip install -e ./lab` and try again",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if args.replay:
        replayed: int = lab.run(workdir=args.workdir, print_timeline=print_timeline)
        return replayed
    live: int = lab.run(workdir=args.workdir)
    return live
