"""Every file and secret a configuration names, checked as they sit on this machine.

``validate`` used to pass a config whose token files did not exist, and ``run`` then stopped at
the first one. Here is the one list of what a config names -- secrets (files or environment
variables), TLS files, the units' directories and files -- and a check of each: present,
readable, non-empty, and for secrets not open to other users. ``validate`` reports every
problem at once (``--syntax-only`` skips this, for packaging pipelines that validate before
secrets exist); the daemon's start logs the warnings (a world-readable token).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchdog import config, credentials, logs


@dataclass(frozen=True, slots=True)
class Named:
    """One thing a config names: a secret's file or variable, or another file or directory."""

    what: str  # as messages say it: "operator API token", "fallback binary"
    path: Path | None = None
    env: str | None = None
    kind: Literal["secret", "file", "dir"] = "secret"


def named(settings: config.Settings) -> list[Named]:
    """Everything ``settings`` names that must exist on this machine, in config order."""
    found: list[Named] = []

    def secret(what: str, path: Path | None, env: str | None) -> None:
        if path is not None or env is not None:
            found.append(Named(what, path, env))

    prom = settings.prometheus
    secret("Prometheus bearer token", prom.bearer_token_file, prom.bearer_token_env)
    if prom.basic_auth is not None:
        auth = prom.basic_auth
        secret("Prometheus basic-auth password", auth.password_file, auth.password_env)
    for what, path in (
        ("Prometheus CA", prom.tls.ca_file),
        ("Prometheus client cert", prom.tls.cert_file),
    ):
        if path is not None:
            found.append(Named(what, path, kind="file"))
    secret("Prometheus client key", prom.tls.key_file, None)
    listen = settings.listen
    secret("operator API token", listen.token_file, listen.token_env)
    for operator in listen.operators:
        secret(f"operator token of {operator.name}", operator.token_file, operator.token_env)
    secret(
        "Alertmanager webhook token",
        settings.alertmanager.token_file,
        settings.alertmanager.token_env,
    )
    slack = settings.slack
    if slack is not None:
        secret("Slack bot token", slack.bot_token_file, slack.bot_token_env)
        secret("Slack signing secret", slack.signing_secret_file, slack.signing_secret_env)
        if slack.socket_mode:
            secret("Slack app token", slack.app_token_file, slack.app_token_env)
    for hook in settings.notify.webhooks:
        secret(f"webhook token for {hook.url}", hook.token_file, hook.token_env)
    if settings.notify.grafana is not None:
        graf = settings.notify.grafana
        secret("Grafana token", graf.token_file, graf.token_env)
    for target in settings.targets:
        runbook = target.runbook
        secret(f"{target.name} service password", runbook.password_file, runbook.password_env)
        for side, unit in (("primary", target.primary), ("fallback", target.fallback)):
            if unit.config_dir is not None:
                found.append(Named(f"{target.name} {side} config_dir", unit.config_dir, kind="dir"))
            if unit.unit_file is not None:
                found.append(Named(f"{target.name} {side} unit_file", unit.unit_file, kind="file"))
            if unit.binary is not None:
                found.append(Named(f"{target.name} {side} binary", unit.binary, kind="file"))
    return found


def problems(
    settings: config.Settings, *, environ: Mapping[str, str] | None = None
) -> list[credentials.FileProblem]:
    """What is wrong with everything ``settings`` names (fatal ones first in each item)."""
    env = os.environ if environ is None else environ
    found: list[credentials.FileProblem] = []
    for item in named(settings):
        if item.env is not None:
            value = env.get(item.env, "").strip()
            if not value:
                found.append(
                    credentials.FileProblem(
                        f"the {item.what} variable ${item.env} is not set or empty here "
                        "(validate where the daemon runs, or with --syntax-only)",
                        True,
                    )
                )
            elif len(value) < logs.MIN_SECRET:
                found.append(credentials.short(f"the {item.what} in ${item.env}", len(value)))
            continue
        if item.path is None:
            continue
        if item.kind == "secret":
            found += credentials.file_problems(item.path, item.what)
        elif item.kind == "dir" and not item.path.is_dir():
            found.append(
                credentials.FileProblem(f"the {item.what} {item.path} is no directory", True)
            )
        elif item.kind == "file" and not os.access(item.path, os.R_OK):
            why = "does not exist" if not item.path.exists() else "cannot be read"
            found.append(credentials.FileProblem(f"the {item.what} {item.path} {why}", True))
    return found
