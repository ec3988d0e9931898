"""Every secret the daemon needs, read once at start, never printed (not even in a traceback)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from watchdog import (
    config,
    credentials,
    errors,
)
from watchdog.fleet import dsn

log = structlog.get_logger("watchdog.runtime")


@dataclass(frozen=True, slots=True, repr=False)  # never printed, not even in a traceback
class Secrets:
    """Every secret the daemon needs, read once at start (a missing one changes nothing)."""

    operators: tuple[credentials.Identity, ...]  # the operator API's: each token names a person
    alertmanager_token: str | None
    passwords: dict[str, str]  # each target's service secret (Lavalink's password)
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    webhook_tokens: tuple[str | None, ...] = ()  # one per notify.webhooks entry
    grafana_token: str | None = None
    fleet_dsn: str | None = None  # fleet mode's PostgreSQL (it holds the password)

    @classmethod
    def read(cls, settings: config.Settings) -> Secrets:
        read = credentials.read_secret
        slack = settings.slack
        return cls(
            operators=_operators(settings.listen),
            alertmanager_token=read(
                settings.alertmanager.token_file,
                settings.alertmanager.token_env,
                "Alertmanager webhook token",
            ),
            passwords={
                t.name: credentials.service_secret(t.runbook.password_file, t.runbook.password_env)
                for t in settings.targets
            },
            slack_bot_token=read(slack.bot_token_file, slack.bot_token_env, "Slack bot token")
            if slack
            else None,
            slack_signing_secret=read(
                slack.signing_secret_file, slack.signing_secret_env, "Slack signing secret"
            )
            if slack
            else None,
            slack_app_token=read(slack.app_token_file, slack.app_token_env, "Slack app token")
            if slack and slack.socket_mode
            else None,
            webhook_tokens=tuple(
                read(hook.token_file, hook.token_env, f"webhook token for {hook.url}")
                for hook in settings.notify.webhooks
            ),
            grafana_token=read(annotate.token_file, annotate.token_env, "Grafana token")
            if (annotate := settings.notify.grafana) is not None
            else None,
            fleet_dsn=dsn.read(settings.fleet) if settings.fleet is not None else None,
        )

    def __post_init__(self) -> None:
        for operator in self.operators:  # one credential, one use: Alertmanager never votes
            if self.alertmanager_token and credentials.same_token(
                operator.token, self.alertmanager_token
            ):
                raise errors.ConfigError(
                    f"the Alertmanager webhook token is also operator {operator.name}'s: "
                    "give each its own"
                )

    def values(self) -> list[str | None]:
        """Every secret, for the log's redaction."""
        return [
            *(operator.token for operator in self.operators),
            self.alertmanager_token,
            *self.passwords.values(),
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            *self.webhook_tokens,
            self.grafana_token,
            *(dsn.secret_parts(self.fleet_dsn) if self.fleet_dsn else []),
        ]


def _operators(listen: config.ListenSettings) -> tuple[credentials.Identity, ...]:
    """Each operator's token, named; two operators with one token could not be told apart."""
    found = []
    shared = credentials.read_secret(listen.token_file, listen.token_env, "operator API token")
    if shared is not None:
        found.append(credentials.Identity(listen.token_name, shared))
    for operator in listen.operators:
        token = credentials.read_secret(
            operator.token_file, operator.token_env, f"operator token of {operator.name}"
        )
        found.append(credentials.Identity(operator.name, token or ""))
    for index, one in enumerate(found):
        for other in found[index + 1 :]:
            if credentials.same_token(one.token, other.token):
                raise errors.ConfigError(
                    f"operators {one.name} and {other.name} have the same token: "
                    "each needs their own, or the token cannot say who it is"
                )
    return tuple(found)
