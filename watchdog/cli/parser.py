"""The command line's grammar: every command, its options and its help.

Each command's ``--help`` says what it does in one line, shows an example and lists its exit
codes. This module imports nothing of the daemon, so ``--help`` and a mistyped option answer at
once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from watchdog import __version__
from watchdog.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, _fail

MAX_BACKTEST_STEPS = 1_000_000  # ~6 months at 15 s; more is almost surely a mistyped time

CONFIG = "/etc/rollback-watchdog/config.yml"
_BAD_INPUT = (EXIT_BAD_INPUT, "bad input: an invalid option, file or config (one message why)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(f"{self.prog}: {message}"))


def _epilog(example: str, exits: list[tuple[int, str]]) -> str:
    lines = ["example:", *(f"  {line}" for line in example.splitlines()), "", "exit codes:"]
    lines += [f"  {code}  {meaning}" for code, meaning in sorted(exits)]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rollback-watchdog",
        description="Rolls a systemd service back to its predecessor when its rules say so.",
        epilog=_epilog(
            f"rollback-watchdog status --config {CONFIG}\n"
            "rollback-watchdog COMMAND --help     (each command's options and exit codes)",
            [
                (EXIT_OK, "ok / healthy"),
                (EXIT_FAILED, "a check failed, a target needs attention, or a request was refused"),
                _BAD_INPUT,
                (EXIT_UNREACHABLE, "the daemon, its API, Prometheus or systemd did not answer"),
                (141, "the output's reader went away (e.g. `| head`); nothing more is printed"),
            ],
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="COMMAND"
    )

    def command(
        name: str, summary: str, example: str, exits: list[tuple[int, str]]
    ) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=_epilog(example, exits),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", "-c", type=Path, required=True, help="config file (YAML)")

    def with_json(sub: argparse.ArgumentParser, what: str = "print JSON") -> None:
        sub.add_argument("--json", action="store_true", help=f"{what} (times in RFC 3339)")

    validate = command(
        "validate",
        "check config and rules files, offline, and say every problem at once",
        f"rollback-watchdog validate --config {CONFIG}\n"
        "rollback-watchdog validate rules/lavalink.yml",
        [(EXIT_OK, "every file is valid"), (EXIT_BAD_INPUT, "a problem, each one named")],
    )
    validate.add_argument("paths", nargs="*", type=Path, help="config or rules files")
    validate.add_argument("--config", "-c", type=Path, help="a config file (and its rules)")
    validate.add_argument(
        "--syntax-only",
        action="store_true",
        help="check the files' syntax and rules only, not the secrets and files they name "
        "(for packaging pipelines that validate before secrets are installed)",
    )
    with_json(validate)

    check = command(
        "check",
        "evaluate a target once now against Prometheus and show every signal",
        f"rollback-watchdog check --config {CONFIG} --target lavalink",
        [
            (EXIT_OK, "the verdict is hold"),
            (EXIT_FAILED, "another verdict (warn, propose, rollback, inconclusive)"),
            _BAD_INPUT,
            (EXIT_UNREACHABLE, "Prometheus did not answer"),
        ],
    )
    with_config(check)
    check.add_argument("--target", help="target name (default: the only one)")
    with_json(check)

    status = command(
        "status",
        "say whether the daemon runs and what it last decided, per target",
        f"rollback-watchdog status --config {CONFIG} --target lavalink",
        [
            (EXIT_OK, "healthy: the daemon evaluates, every target armed and holding"),
            (
                EXIT_FAILED,
                "degraded: a target disarmed, not holding, rolling back or awaiting approval, "
                "or its last evaluation stale",
            ),
            _BAD_INPUT,
            (EXIT_UNREACHABLE, "the daemon is not running (no listener, no fresh evaluation)"),
        ],
    )
    with_config(status)
    status.add_argument("--target", help="only this target (default: all)")
    with_json(status)

    run = command(
        "run",
        "run the watchdog daemon (what the systemd unit starts)",
        f"rollback-watchdog run --config {CONFIG} --log-format console",
        [
            (EXIT_OK, "stopped cleanly (SIGTERM)"),
            (EXIT_BAD_INPUT, "bad config or rules, an unusable port or journal"),
        ],
    )
    with_config(run)
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--log-format",
        choices=["console", "json"],
        default=None,
        help="json (one object per line) or console; default: json under systemd, console at "
        "a terminal, json otherwise",
    )

    replay = command(
        "backtest",
        "replay the rules and policy over Prometheus's history",
        f"rollback-watchdog backtest --config {CONFIG} --start 2026-11-25T10:00:00Z "
        "--end 2026-11-25T13:00:00Z",
        [
            (EXIT_OK, "replayed (whatever the verdicts)"),
            _BAD_INPUT,
            (EXIT_UNREACHABLE, "Prometheus did not answer"),
        ],
    )
    with_config(replay)
    replay.add_argument("--prometheus", help="Prometheus URL (default: the config's)")
    replay.add_argument("--start", required=True, help="RFC 3339 or Unix seconds")
    replay.add_argument("--end", required=True, help="RFC 3339 or Unix seconds")
    replay.add_argument("--step", default="15s", help="evaluation step [15s]")
    replay.add_argument("--target", help="target name (default: the only one)")
    with_json(replay, "print the JSON contract")

    rollback = command(
        "rollback",
        "roll back now, step by step (the runbook), through the daemon or here over D-Bus",
        f"rollback-watchdog rollback --config {CONFIG} --reason 'voice drops since 14:00'\n"
        f"rollback-watchdog rollback --config {CONFIG} --reason drill --dry-run",
        [
            (EXIT_OK, "rolled back and verified (--dry-run: preflight passed)"),
            (EXIT_FAILED, "the run failed or was refused, preflight failed, or not confirmed"),
            _BAD_INPUT,
            (EXIT_UNREACHABLE, "the daemon's API or systemd did not answer"),
        ],
    )
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
    with_json(rollback, "print the run's outcome and steps as JSON, not the progress (needs --yes)")

    for verb, words in (("approve", "approve a pending rollback"), ("deny", "deny a pending one")):
        vote = command(
            verb,
            f"{words} (your token names you; see `status` for the number)",
            f"rollback-watchdog {verb} --config {CONFIG} 7",
            [
                (EXIT_OK, "your vote was counted"),
                (EXIT_FAILED, "refused (not an approver, already decided, ...)"),
                (EXIT_BAD_INPUT, "bad input, or no such approval"),
                (EXIT_UNREACHABLE, "the daemon did not answer"),
            ],
        )
        with_config(vote)
        vote.add_argument("id", help="the approval's number (see status)")
        vote.add_argument(
            "--token-file",
            type=Path,
            help="your operator token: the vote counts for whom it names "
            "(default: $ROLLBACK_WATCHDOG_TOKEN, else listen.token_*)",
        )
        vote.add_argument("--url", help="the daemon's listener (default: from listen:)")
        with_json(vote)

    show = command(
        "report",
        "print a run's rollback report (Markdown; --json for its facts)",
        f"rollback-watchdog report --config {CONFIG} 3 > rollback-3.md",
        [(EXIT_OK, "printed"), (EXIT_BAD_INPUT, "bad input, or no such run")],
    )
    with_config(show)
    show.add_argument("run", help="the run's number (see status)")
    with_json(show, "print the report's facts as JSON instead of Markdown")

    render = command(
        "rules",
        "print a target's rules files, templates filled in, for Prometheus",
        f"rollback-watchdog rules --config {CONFIG} > /etc/prometheus/rules/lavalink.yml",
        [(EXIT_OK, "printed"), _BAD_INPUT],
    )
    with_config(render)
    render.add_argument("--target", help="target name (default: the only one)")

    rearm = command(
        "rearm",
        "arm a target again after a rollback (once the primary is fixed and running)",
        f"rollback-watchdog rearm --config {CONFIG} --by alice",
        [(EXIT_OK, "armed (or it already was)"), _BAD_INPUT],
    )
    with_config(rearm)
    rearm.add_argument("--target", help="target name (default: the only one)")
    rearm.add_argument("--by", default="operator", help="who re-arms (journaled)")
    with_json(rearm)

    migrate = command(
        "migrate",
        "create or update the fleet store's schema (PostgreSQL; fleet mode)",
        f"rollback-watchdog migrate --config {CONFIG}",
        [
            (EXIT_OK, "the schema is current"),
            _BAD_INPUT,
            (EXIT_UNREACHABLE, "the fleet store did not answer"),
        ],
    )
    with_config(migrate)

    fleet = command(
        "fleet",
        "the fleet group: status, resume after a halt, or approve-waves (roll the rest of a "
        "bad release back, in waves)",
        f"rollback-watchdog fleet status --config {CONFIG} --json",
        [
            (EXIT_OK, "done (status: the group is not halted)"),
            (EXIT_FAILED, "status: the group is halted"),
            _BAD_INPUT,
            (EXIT_UNREACHABLE, "the fleet store did not answer"),
        ],
    )
    fleet.add_argument("action", choices=["status", "resume", "approve-waves"])
    with_config(fleet)
    fleet.add_argument("--group", help="another group than the config's fleet.group")
    fleet.add_argument("--json", action="store_true", help="print JSON (status)")
    fleet.add_argument(
        "--by", default="operator", help="who resumes or approves (the fleet's audit trail)"
    )

    demo = command(
        "demo",
        "two live incidents on a sandboxed systemd and a real Prometheus (root; from a clone)",
        "sudo rollback-watchdog demo --workdir /tmp/demo",
        [
            (EXIT_OK, "both incidents ended in a verified fallback"),
            (EXIT_FAILED, "an incident did not go as expected"),
            (EXIT_BAD_INPUT, "no sandbox systemd or no lab here, or a used --workdir"),
        ],
    )
    demo.add_argument("--workdir", type=Path, help="put files here (default: a new temp dir)")
    demo.add_argument(
        "--replay",
        action="store_true",
        help="instead: backtest a bundled three-hour incident (no systemd needed)",
    )
    return parser
