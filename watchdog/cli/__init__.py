"""The ``rollback-watchdog`` command line.

Exit codes are a contract: 0 ok, 1 a check failed (``check`` found something), 2 bad input --
an unreadable or invalid file, a bad option, an unreachable Prometheus -- with one clear
message and never a traceback. ``parser`` is the grammar; ``readonly`` the commands that read,
``operate`` those that change things, ``api`` the operator API's client.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from watchdog import errors, journal, logs
from watchdog.cli.common import _fail, _os_message
from watchdog.cli.fleet import _fleet, _migrate
from watchdog.cli.operate import _rearm, _rollback, _vote
from watchdog.cli.parser import build_parser
from watchdog.cli.readonly import (
    _backtest,
    _check,
    _demo,
    _report,
    _rules,
    _run,
    _status,
    _validate,
)

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _HANDLERS[args.command]
    if args.command != "run":  # `run` sets its own; the others say only what went wrong
        logs.configure(level="warning", renderer="console")
    try:
        return handler(args)
    except errors.InputError as exc:
        return _fail(str(exc))
    except OSError as exc:  # an unusable path or port
        return _fail(f"{args.command}: {_os_message(exc)}")
    except journal.STORE_ERRORS as exc:  # an unusable database
        return _fail(f"{args.command}: {_os_message(exc)}")
    except KeyboardInterrupt:
        return 130


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
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
    "migrate": _migrate,
    "fleet": _fleet,
}
