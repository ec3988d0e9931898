"""``run`` and ``demo``: the two commands that run things for a while without changing a
service by hand -- the daemon itself, and the live demo on the lab's stage.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Mapping

from watchdog import config, logs, rules, runtime
from watchdog.cli.common import EXIT_BAD_INPUT, EXIT_OK


def log_format(chosen: str | None, *, environ: Mapping[str, str] | None = None) -> str:
    """``--log-format``, else JSON under systemd (journald keeps the fields), console at a
    terminal, JSON otherwise (a pipe or a file is read by programs)."""
    if chosen is not None:
        return chosen
    env = os.environ if environ is None else environ
    if env.get("INVOCATION_ID") or env.get("JOURNAL_STREAM"):  # set by systemd for a unit
        return "json"
    return "console" if sys.stderr.isatty() else "json"


def run(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    for target in settings.targets:  # fail fast, with exit 2, before anything starts
        rules.load(target.rules, target.rule_variables)
    console = log_format(args.log_format) == "console"
    logs.configure(level=args.log_level, renderer="console" if console else "json")
    asyncio.run(runtime.run(settings, config_path=args.config))
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
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
        from watchdog.cli.evaluate import print_timeline

        replayed: int = lab.run(workdir=args.workdir, print_timeline=print_timeline)
        return replayed
    live: int = lab.run(workdir=args.workdir)
    return live
