"""The command line's grammar: every command, its options and its help."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from watchdog import (
    __version__,
)
from watchdog.cli.common import _fail

MAX_BACKTEST_STEPS = 1_000_000  # ~6 months at 15 s; more is almost surely a mistyped time


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(f"{self.prog}: {message}"))


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

    migrate = commands.add_parser(
        "migrate", help="create or update the fleet store's schema (PostgreSQL; fleet mode)"
    )
    with_config(migrate)

    fleet = commands.add_parser(
        "fleet",
        help="the fleet group: status (exit 1 while halted), resume after a halt, or "
        "approve-waves (roll the rest of a bad release back, in waves)",
    )
    fleet.add_argument("action", choices=["status", "resume", "approve-waves"])
    with_config(fleet)
    fleet.add_argument("--group", help="another group than the config's fleet.group")
    fleet.add_argument("--json", action="store_true", help="print JSON (status)")
    fleet.add_argument(
        "--by", default="operator", help="who resumes or approves (the fleet's audit trail)"
    )

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
