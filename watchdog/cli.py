"""The ``rollback-watchdog`` command line.

Exit codes are a contract: 0 ok, 1 a check failed (``check`` found something),
2 bad input -- an unreadable or invalid file, a bad option, an unreachable Prometheus -- with
one clear message and never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx

from watchdog import (
    __version__,
    backtest,
    config,
    configcheck,
    credentials,
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
from watchdog.executor import runbook
from watchdog.executor.systemd import Systemd, SystemdError, Unreachable
from watchdog.sources import prometheus

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
MAX_BACKTEST_STEPS = 1_000_000  # ~6 months at 15 s; more is almost surely a mistyped time


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(f"{self.prog}: {message}"))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rollback-watchdog",
        description="Rolls a systemd service back to its predecessor when its rules say so.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", "-c", type=Path, required=True, help="config file (YAML)")

    validate = commands.add_parser("validate", help="check config and rules files")
    validate.add_argument("paths", nargs="*", type=Path, help="config or rules files")
    validate.add_argument("--config", "-c", type=Path, help="a config file (and its rules)")
    validate.add_argument(
        "--syntax-only",
        action="store_true",
        help="check the files' syntax and rules only, not the secrets and files they name "
        "(for packaging pipelines that validate before secrets are installed)",
    )

    check = commands.add_parser("check", help="evaluate once now and show every signal")
    with_config(check)
    check.add_argument("--target", help="target name (default: the only one)")
    check.add_argument("--json", action="store_true", help="print JSON")

    status = commands.add_parser("status", help="show targets, incidents and decisions")
    with_config(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    run = commands.add_parser("run", help="run the watchdog daemon")
    with_config(run)
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    replay = commands.add_parser("backtest", help="replay the rules and policy over history")
    with_config(replay)
    replay.add_argument("--prometheus", help="Prometheus URL (default: the config's)")
    replay.add_argument("--start", required=True, help="RFC 3339 or Unix seconds")
    replay.add_argument("--end", required=True, help="RFC 3339 or Unix seconds")
    replay.add_argument("--step", default="15s", help="evaluation step [15s]")
    replay.add_argument("--target", help="target name (default: the only one)")
    replay.add_argument("--json", action="store_true", help="print the JSON contract")

    rollback = commands.add_parser("rollback", help="roll back now, step by step (the runbook)")
    with_config(rollback)
    rollback.add_argument("--reason", required=True, help="why (journaled, in the report)")
    rollback.add_argument("--target", help="target name (default: the only one)")
    rollback.add_argument("--dry-run", action="store_true", help="print the plan and preflight")
    rollback.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rollback.add_argument(
        "--by",
        default=None,
        help="with --local: who rolls back, journaled (default: $SUDO_USER or $USER); "
        "through the daemon your token names you",
    )
    rollback.add_argument(
        "--token-file",
        type=Path,
        help="your operator token (default: $ROLLBACK_WATCHDOG_TOKEN, else listen.token_*)",
    )
    rollback.add_argument(
        "--category",
        choices=["manual", "security"],
        default="manual",
        help="why, in a word (security: a vulnerability without a fix) [manual]",
    )
    rollback.add_argument(
        "--local",
        action="store_true",
        help="run the runbook from here over D-Bus, not through the daemon's API "
        "(when the daemon is down; the default when the API has no token)",
    )
    rollback.add_argument("--url", help="the daemon's listener (default: from listen:)")

    for verb, words in (("approve", "approve a pending rollback"), ("deny", "deny it")):
        vote = commands.add_parser(verb, help=words)
        with_config(vote)
        vote.add_argument("id", help="the approval's number (see status)")
        vote.add_argument(
            "--token-file",
            type=Path,
            help="your operator token: the vote counts for whom it names "
            "(default: $ROLLBACK_WATCHDOG_TOKEN, else listen.token_*)",
        )
        vote.add_argument("--url", help="the daemon's listener (default: from listen:)")

    show = commands.add_parser("report", help="print a run's rollback report (Markdown)")
    with_config(show)
    show.add_argument("run", help="the run's number (see status)")

    render = commands.add_parser(
        "rules", help="print a target's rules files, templates filled in, for Prometheus"
    )
    with_config(render)
    render.add_argument("--target", help="target name (default: the only one)")

    rearm = commands.add_parser("rearm", help="arm a target again after a rollback")
    with_config(rearm)
    rearm.add_argument("--target", help="target name (default: the only one)")
    rearm.add_argument("--by", default="operator", help="who re-arms (journaled)")

    demo = commands.add_parser(
        "demo", help="two live incidents on a sandboxed systemd and a real Prometheus"
    )
    demo.add_argument("--workdir", type=Path, help="put files here (default: a new temp dir)")
    demo.add_argument(
        "--replay",
        action="store_true",
        help="instead: backtest a bundled three-hour incident (no systemd needed)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _HANDLERS[args.command]
    if args.command != "run":  # `run` sets its own; the others say only what went wrong
        logs.configure(level="warning", renderer="console")
    try:
        return handler(args)
    except errors.InputError as exc:
        return _fail(str(exc))
    except (OSError, sqlite3.Error) as exc:  # an unusable path, port or database
        return _fail(f"{args.command}: {_os_message(exc)}")
    except KeyboardInterrupt:
        return 130


def _os_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


# -- validate -------------------------------------------------------------------------------


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


# -- check ----------------------------------------------------------------------------------


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


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


# -- status ---------------------------------------------------------------------------------


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


# -- report ---------------------------------------------------------------------------------


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


# -- run ------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    for target in settings.targets:  # fail fast, with exit 2, before anything starts
        rules.load(target.rules, target.rule_variables)
    logs.configure(level=args.log_level)
    asyncio.run(runtime.run(settings, config_path=args.config))
    return EXIT_OK


# -- backtest -------------------------------------------------------------------------------


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


# -- rollback -------------------------------------------------------------------------------


def _who(args: argparse.Namespace) -> str:
    return args.by or os.environ.get("SUDO_USER") or os.environ.get("USER") or "operator"


def _rollback(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    target = settings.target(args.target)
    if not args.reason.strip():
        return _fail("--reason must say why")
    by = _who(args)
    through_api = not (args.local or args.dry_run) and _api_configured(settings)
    if through_api and args.by is not None:
        return _fail("--by names who rolls back with --local; through the daemon, your token does")
    if not args.dry_run and not args.yes:
        if not sys.stdin.isatty():
            return _fail("rollback needs --yes when not run from a terminal")
        answer = input(
            f"Roll {target.name} back: stop {target.primary.unit}, start {target.fallback.unit}?"
            " [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return EXIT_FAILED
    if through_api:
        return _rollback_via_api(settings, target, args)
    return asyncio.run(_rollback_async(settings, target, args, by))


# -- the daemon's operator API --------------------------------------------------------------


TOKEN_VARIABLE = "ROLLBACK_WATCHDOG_TOKEN"  # noqa: S105 - a variable's name, not a token


def _api_configured(settings: config.Settings) -> bool:
    return settings.listen.api_on


def _operator_token(settings: config.Settings, args: argparse.Namespace) -> str:
    """The caller's own token: ``--token-file``, else ``$ROLLBACK_WATCHDOG_TOKEN``, else the
    shared ``listen.token_*`` if it is readable here. Never another operator's: the daemon
    names whoever the token belongs to, so the CLI must not pick a name for you."""
    if getattr(args, "token_file", None) is not None:
        return credentials.read_secret(args.token_file, None, "operator token") or ""
    if os.environ.get(TOKEN_VARIABLE, "").strip():
        return os.environ[TOKEN_VARIABLE].strip()
    listen = settings.listen
    shared = credentials.read_secret(
        listen.token_file, listen.token_env, "operator API token (listen.token_*)"
    )
    if shared is not None and not credentials.is_digest(shared):
        return shared
    raise errors.InputError(
        f"no operator token: give your own with --token-file or ${TOKEN_VARIABLE} "
        "(the daemon names you by it)"
    )


class _Api:
    """The daemon's operator API, as the CLI calls it (``listen:`` and an operator's token)."""

    def __init__(self, settings: config.Settings, url: str | None, token: str) -> None:
        host = settings.listen.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - a wildcard bind
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        self.url = (url or f"http://{host}:{settings.listen.port}").rstrip("/")
        self._client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=15.0
        )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise _Unreachable(
                f"the watchdog at {self.url} does not answer ({type(exc).__name__}): "
                "is `rollback-watchdog run` running?"
            ) from None

    def close(self) -> None:
        self._client.close()


_Unreachable = errors.Unreachable  # the daemon did not answer: a failed check (exit 1)


def _said(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("message", answer.text))
    except ValueError:
        return answer.text.strip() or answer.reason_phrase


def _rollback_via_api(
    settings: config.Settings, target: config.TargetSettings, args: argparse.Namespace
) -> int:
    api = _Api(settings, args.url, _operator_token(settings, args))
    try:
        answer = api.call(
            "POST",
            "/api/v1/rollback",
            {
                "reason": args.reason.strip(),
                "category": args.category,
                "target": target.name,
                "request_id": f"cli-{os.getpid()}-{time.time_ns()}",
            },
        )
        if answer.status_code == 400:
            return _fail(_said(answer))
        if answer.status_code != 202:
            print(f"not rolled back: {_said(answer)} (HTTP {answer.status_code})", file=sys.stderr)
            return EXIT_FAILED
        incident = int(answer.json()["incident"])
        print(
            f"rolling {target.name} back through the watchdog at {api.url} as "
            f"{answer.json().get('by', '?')} (incident #{incident}): "
            f"{target.primary.unit} -> {target.fallback.unit}"
        )
        return _follow_incident(api, incident)
    except _Unreachable as exc:
        print(f"error: {exc}; --local runs the runbook from here", file=sys.stderr)
        return EXIT_FAILED
    finally:
        api.close()


def _follow_incident(
    api: _Api,
    incident: int,
    *,
    poll: float = 0.5,
    start_within: float = 30.0,
    within: float = 900.0,
) -> int:
    """Print each step of the incident's run as it ends, until the run ends (exit 1 if no run
    starts within ``start_within`` seconds, or it does not end within ``within``)."""
    shown = 0
    total = len(runbook.STEPS)
    begun = time.monotonic()
    while True:
        waited = time.monotonic() - begun
        if waited > within:
            print(f"incident #{incident}: the run has not ended after {within:g}s", file=sys.stderr)
            return EXIT_FAILED
        answer = api.call("GET", f"/api/v1/incidents/{incident}")
        if answer.status_code != 200:
            print(f"cannot follow incident #{incident}: {_said(answer)}", file=sys.stderr)
            return EXIT_FAILED
        runs = answer.json()["runs"]
        if not runs and waited > start_within:
            print(
                f"incident #{incident}: no run started within {start_within:g}s "
                "(see `status` and the daemon's log)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if runs:
            run = runs[-1]
            done = [step for step in run["steps"] if step["status"] != "running"]
            for step in done[shown:]:
                print(
                    f"  [{step['seq']}/{total}] {step['name']:<15} {step['status']}: "
                    f"{step['detail']}"
                )
            shown = len(done)
            if run["status"] != "running":
                print(f"run #{run['id']}: {run['status'].upper()}: {run['outcome']}")
                return EXIT_OK if run["status"] == "succeeded" else EXIT_FAILED
        time.sleep(poll)


def _vote(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    if not re.fullmatch(r"[1-9][0-9]{0,17}", args.id):
        return _fail(f"{args.id!r} is not an approval number (see `status`)")
    api = _Api(settings, args.url, _operator_token(settings, args))
    try:
        answer = api.call(
            "POST",
            f"/api/v1/approvals/{int(args.id)}",
            {"decision": args.command, "request_id": f"cli-{os.getpid()}-{time.time_ns()}"},
        )
    except _Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        api.close()
    if answer.status_code in (400, 404):  # no such approval: bad input
        return _fail(f"{_said(answer)} (HTTP {answer.status_code})")
    if answer.status_code != 200:
        print(f"refused: {_said(answer)} (HTTP {answer.status_code})", file=sys.stderr)
        return EXIT_FAILED
    print(_said(answer))
    return EXIT_OK


async def _rollback_async(
    settings: config.Settings, target: config.TargetSettings, args: argparse.Namespace, by: str
) -> int:
    if args.dry_run:
        print(f"rollback plan for {target.name}: {target.primary.unit} -> {target.fallback.unit}")
        steps = runbook.plan(target, settings.state_dir)
        for seq, (name, what) in enumerate(steps, start=1):
            print(f"  {seq}. {name:<15} {what}")
        print(f"  on a failure after stop-primary: {target.runbook.on_fallback_failure}")
    systemd: Systemd | Unreachable
    try:
        systemd = await Systemd.connect(
            settings.systemd.bus, call_timeout=target.runbook.job_timeout
        )
    except SystemdError as exc:
        if not args.dry_run:
            return _fail(str(exc))
        systemd = Unreachable(str(exc))  # a dry run still checks everything else
    try:
        if args.dry_run:
            ctx = runbook.Context(
                target=target,
                systemd=systemd,
                store=None,
                state_dir=settings.state_dir,
                run_id=0,
                password="",
            )
            try:
                detail = await runbook.preflight(ctx)
            except runbook.StepFailed as exc:
                print(f"preflight: FAILED: {exc}")
                return EXIT_FAILED
            finally:
                await ctx.http.aclose()
            print(f"preflight: OK ({detail}); nothing was changed")
            return EXIT_OK
        if isinstance(systemd, Unreachable):  # only a dry run goes on without systemd
            return _fail(systemd.reason)
        return await _execute(settings, target, systemd, args.reason, by, args.category)
    finally:
        systemd.close()


async def _execute(
    settings: config.Settings,
    target: config.TargetSettings,
    systemd: Systemd,
    reason: str,
    by: str,
    category: str = "manual",
) -> int:
    store = journal.Journal.open(settings.state_dir)
    try:
        incident = store.open_incident_id(target.name)
        if incident is None:
            incident = store.open_manual_incident(
                target.name, reason=reason, at=time.time(), category=category, by=by, via="cli"
            )
        print(f"rolling {target.name} back: {target.primary.unit} -> {target.fallback.unit}")
        try:
            outcome = await runbook.start_run(
                target,
                store,
                systemd,
                settings.state_dir,
                trigger=model.Trigger.MANUAL,
                initiated_by=by,
                reason=reason,
                incident_id=incident,
                observer=_show_step,
            )
        except journal.RunInFlight as exc:
            print(f"run #{exc.run_id} is already in flight: following it")
            outcome = await _follow(store, exc.run_id, target, systemd, settings.state_dir)
    finally:
        store.close()
    print(f"run #{outcome.run_id}: {outcome.status.upper()}: {outcome.detail}")
    return EXIT_OK if outcome.succeeded else EXIT_FAILED


def _show_step(event: runbook.StepEvent) -> None:
    total = len(runbook.STEPS)
    if event.status == "running":
        print(f"  [{event.seq}/{total}] {event.name:<15} ...", end="", flush=True)
    elif event.status == "skipped":
        print(f"  [{event.seq}/{total}] {event.name:<15} skipped: {event.detail}", flush=True)
    else:
        print(f" {event.status} ({event.seconds:.1f}s) {event.detail}", flush=True)


async def _follow(
    store: journal.Journal,
    run_id: int,
    target: config.TargetSettings,
    systemd: Systemd,
    state_dir: Path,
) -> runbook.Outcome:
    """Show another process's run until it ends (a second trigger joins the first). If that
    process dies meanwhile, reconcile its run here."""
    if run_id < 0:  # it ended between our look and our lock
        last = store.runs(target=target.name, limit=1)
        if not last:
            raise errors.InputError("the run in flight vanished from the journal")
        run_id = last[0].id
    shown = 0
    while True:
        steps = await asyncio.to_thread(store.steps, run_id)
        for step in steps[shown:]:
            if step.status == "running":
                break
            print(f"  {step.name:<15} {step.status}: {step.detail}")
            shown += 1
        run = await asyncio.to_thread(store.run, run_id)
        if run.status != "running":
            return runbook.Outcome(run.id, model.RunStatus(run.status), run.outcome)
        orphaned = await runbook.reconcile(target, store, systemd, state_dir, observer=_show_step)
        if orphaned is not None:  # its process had died: finished here
            return orphaned
        await asyncio.sleep(0.5)


# -- rearm ----------------------------------------------------------------------------------


def _rearm(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    target = settings.target(args.target)
    store = journal.Journal.open_existing(settings.state_dir)
    try:
        arming = store.arming(target.name)
        if arming.armed:
            print(f"target {target.name} is already armed; nothing changed")
            return EXIT_OK
        store.set_armed(target.name, True, at=time.time(), by=args.by, note="re-armed via CLI")
    finally:
        store.close()
    print(
        f"target {target.name} armed (it was disarmed by {arming.by}); only evidence newer than "
        "now can act on it"
    )
    return EXIT_OK


# -- rules ---------------------------------------------------------------------------------


def _rules(args: argparse.Namespace) -> int:
    """The target's rules files as Prometheus must load them: a template's ``${...}`` filled
    in with the target's names, checked as the watchdog checks them."""
    settings = config.load(args.config)
    target = settings.target(args.target)
    rules.load(target.rules, target.rule_variables)  # every problem, exit 2, before output
    for path in target.rules:
        text = path.read_text(encoding="utf-8")
        print(f"# {path}, rendered for target {target.name}")
        print(rules.render(text, target.rule_variables, str(path)), end="")
    return EXIT_OK


# -- demo -----------------------------------------------------------------------------------


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


_HANDLERS = {
    "validate": _validate,
    "check": _check,
    "status": _status,
    "run": _run,
    "backtest": _backtest,
    "rearm": _rearm,
    "rules": _rules,
    "report": _report,
    "rollback": _rollback,
    "approve": _vote,
    "deny": _vote,
    "demo": _demo,
}
