"""The ``rollback-watchdog`` command line.

Exit codes are a contract (``common``): 0 ok, 1 a check failed or a request was refused, 2 bad
input -- an unreadable or invalid file, a bad option -- with one clear message and never a
traceback, 3 something the command needs did not answer. ``parser`` is the grammar; one module
per family of commands holds their handlers, imported only when that command runs: ``--help``
and ``validate`` never load the daemon (aiohttp, D-Bus, Slack).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import cast

from watchdog import errors
from watchdog.cli.common import EXIT_BROKEN_PIPE, _fail, _os_message
from watchdog.cli.parser import build_parser

__all__ = ["build_parser", "main"]

_HANDLERS: dict[str, tuple[str, str]] = {
    "validate": ("validate", "validate"),
    "rules": ("validate", "render_rules"),
    "check": ("evaluate", "check"),
    "backtest": ("evaluate", "backtest_command"),
    "status": ("status", "status"),
    "report": ("status", "show_report"),
    "run": ("daemon", "run"),
    "demo": ("daemon", "demo"),
    "rollback": ("operate", "_rollback"),
    "approve": ("operate", "_vote"),
    "deny": ("operate", "_vote"),
    "rearm": ("operate", "_rearm"),
    "migrate": ("fleet", "_migrate"),
    "fleet": ("fleet", "_fleet"),
}


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    module, name = _HANDLERS[command]
    found = getattr(importlib.import_module(f"watchdog.cli.{module}"), name)
    return cast("Callable[[argparse.Namespace], int]", found)


def _store_errors() -> tuple[type[BaseException], ...]:
    from watchdog import journal  # evaluated only when something was raised

    return journal.STORE_ERRORS


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `run` sets its own; the others say only what went wrong, and the offline ones never log
    if args.command not in ("run", "validate", "rules"):
        from watchdog import logs

        logs.configure(level="warning", renderer="console")
    try:
        code = _handler(args.command)(args)
        if sys.stdout is not None:  # None when started with stdout closed (`>&-`)
            sys.stdout.flush()  # a short output is still buffered: a closed pipe shows here
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except errors.InputError as exc:
        return _fail(str(exc))
    except OSError as exc:  # an unusable path or port
        return _fail(f"{args.command}: {_os_message(exc)}")
    except _store_errors() as exc:  # an unusable database
        return _fail(f"{args.command}: {_os_message(exc)}")
    except KeyboardInterrupt:
        return 130
    return code


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (``| head``): print nothing more, not even the
    interpreter's own complaint when it flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout to redirect
        pass
    return EXIT_BROKEN_PIPE
