"""The daemon's operator API as the CLI speaks it: the caller's own token, requests, and a
followed incident.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from watchdog import (
    config,
    credentials,
    errors,
)
from watchdog.cli.common import EXIT_FAILED, EXIT_OK, _fail, _print_json, _unreachable
from watchdog.executor import runbook

TOKEN_VARIABLE = "ROLLBACK_WATCHDOG_TOKEN"  # noqa: S105 - a variable's name, not a token


_Unreachable = errors.Unreachable  # the daemon did not answer: exit 3


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


def listener_url(listen: config.ListenSettings) -> str:
    """Where this host reaches the daemon's listener (a wildcard bind is asked on loopback)."""
    host = listen.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - a wildcard bind
    host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
    return f"http://{host}:{listen.port}"


class _Api:
    """The daemon's operator API, as the CLI calls it (``listen:`` and an operator's token)."""

    def __init__(self, settings: config.Settings, url: str | None, token: str) -> None:
        self.url = (url or listener_url(settings.listen)).rstrip("/")
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


def _said(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("message", answer.text))
    except ValueError:
        return answer.text.strip() or answer.reason_phrase


def _rollback_via_api(
    settings: config.Settings,
    target: config.TargetSettings,
    args: argparse.Namespace,
    *,
    confirm: Callable[[config.TargetSettings, argparse.Namespace], bool],
) -> int:
    """Through the daemon: check that it answers and takes our token, then ask, then order
    the rollback and follow its run (exit 3 if the daemon does not answer)."""
    api = _Api(settings, args.url, _operator_token(settings, args))
    try:
        return _order_and_follow(api, target, args, confirm)
    except _Unreachable as exc:
        return _unreachable(f"{exc}; --local runs the runbook from here")
    finally:
        api.close()


def _order_and_follow(
    api: _Api,
    target: config.TargetSettings,
    args: argparse.Namespace,
    confirm: Callable[[config.TargetSettings, argparse.Namespace], bool],
) -> int:
    looked = api.call("GET", "/api/v1/status")
    if looked.status_code != 200:
        print(f"not rolled back: {_said(looked)} (HTTP {looked.status_code})", file=sys.stderr)
        return EXIT_FAILED
    if not confirm(target, args):
        return EXIT_FAILED
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
    by = answer.json().get("by", "?")
    if not args.json:
        print(
            f"rolling {target.name} back through the watchdog at {api.url} as {by} "
            f"(incident #{incident}): {target.primary.unit} -> {target.fallback.unit}"
        )
    code, run = _follow_incident(api, incident, quiet=args.json)
    if args.json:
        _print_json(
            {
                "via": "api",
                "url": api.url,
                "by": by,
                "target": target.name,
                "incident": incident,
                "run": run["id"] if run is not None else None,
                "status": run["status"] if run is not None else None,
                "outcome": run["outcome"] if run is not None else None,
                "steps": run["steps"] if run is not None else [],
            }
        )
    return code


def _follow_incident(
    api: _Api,
    incident: int,
    *,
    poll: float = 0.5,
    start_within: float = 30.0,
    within: float = 900.0,
    quiet: bool = False,
) -> tuple[int, dict[str, Any] | None]:
    """Print each step of the incident's run as it ends, until the run ends (exit 1 if no run
    starts within ``start_within`` seconds, or it does not end within ``within``); with the
    run as the daemon last showed it. At a terminal, the running step ticks its seconds."""
    shown = 0
    total = len(runbook.STEPS)
    begun = time.monotonic()
    tty = not quiet and sys.stdout.isatty()
    run: dict[str, Any] | None = None
    while True:
        waited = time.monotonic() - begun
        if waited > within:
            print(f"incident #{incident}: the run has not ended after {within:g}s", file=sys.stderr)
            return EXIT_FAILED, run
        answer = api.call("GET", f"/api/v1/incidents/{incident}")
        if answer.status_code != 200:
            print(f"cannot follow incident #{incident}: {_said(answer)}", file=sys.stderr)
            return EXIT_FAILED, run
        runs = answer.json()["runs"]
        if not runs and waited > start_within:
            print(
                f"incident #{incident}: no run started within {start_within:g}s "
                "(see `status` and the daemon's log)",
                file=sys.stderr,
            )
            return EXIT_FAILED, run
        if runs:
            run = runs[-1]
            done = [step for step in run["steps"] if step["status"] != "running"]
            for step in done[shown:]:
                if not quiet:
                    clear = "\r\x1b[K" if tty else ""
                    print(
                        f"{clear}  [{step['seq']}/{total}] {step['name']:<15} {step['status']}: "
                        f"{step['detail']}"
                    )
            shown = len(done)
            running = [step for step in run["steps"] if step["status"] == "running"]
            if tty and running:
                step = running[-1]
                took = max(time.time() - float(step["started_at"]), 0.0)
                print(
                    f"\r\x1b[K  [{step['seq']}/{total}] {step['name']:<15} ... {took:.0f}s",
                    end="",
                    flush=True,
                )
            if run["status"] != "running":
                if not quiet:
                    print(f"run #{run['id']}: {run['status'].upper()}: {run['outcome']}")
                return (EXIT_OK if run["status"] == "succeeded" else EXIT_FAILED), run
        time.sleep(poll)
