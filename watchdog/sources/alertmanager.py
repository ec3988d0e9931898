"""Alertmanager's webhook (payload version 4) as data: which alerts fire for which target.

``POST /alertmanager`` hands the raw body here. ``parse`` checks the shape Alertmanager sends
(``notify/webhook``'s ``Message``; keys it does not know are ignored, as new releases add
some) and names the first problem, so a bad payload is a 400 that changes nothing. ``route``
then finds each alert's target, by its labels only (docs/architecture.md): the
``rollback_target`` label names it, or exactly one target's matcher sets match (by default
its primary's ``job`` or the watchdog's own ``target`` label). An alert's name alone never
routes it -- another team's ``PostgresDown`` must not roll Lavalink back -- and there is no
"only target" shortcut. On its target, an alert named like a rule is that rule's signal;
another counts only if its labels say what it is (``severity`` and ``rollback_category``,
exactly as a rule's). Everything else is *unrouted*, with the reason: journaled and counted,
never a decision. Whether an alert was seen before (Alertmanager retries, re-sends every
``repeat_interval`` and runs in HA pairs) is the journal's business: fingerprint + ``startsAt``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from watchdog import errors, matchers, model, rules, timefmt

TARGET_LABEL = "rollback_target"  # names the target when several are guarded
_ZERO_TIME = -62135596800.0  # Go's zero time.Time, 0001-01-01T00:00:00Z: "no end"


def _instant(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 time")  # noqa: TRY004 - pydantic wants ValueError
    if value.startswith("0001-01-01T00:00:00"):
        return _ZERO_TIME
    try:
        return timefmt.parse_instant(value)
    except ValueError:  # its message quotes the value: nothing sent is echoed back
        raise ValueError("must be an RFC 3339 time") from None


Instant = Annotated[float, BeforeValidator(_instant)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class Alert(_Lenient):
    """One alert of a notification (Alertmanager's ``template.Alert``)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: Instant = Field(alias="startsAt")
    ends_at: Instant | None = Field(default=None, alias="endsAt")
    fingerprint: str = Field(min_length=1, max_length=128)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


class Delivery(_Lenient):
    """One notification: a group of alerts."""

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    group_key: str = Field(default="", alias="groupKey")
    truncated_alerts: int = Field(default=0, alias="truncatedAlerts", ge=0)
    alerts: list[Alert]


def parse(body: bytes) -> Delivery:
    """The notification in ``body``, or ``InputError`` naming what is wrong with it."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # also: not UTF-8, too deep, a giant integer
        raise errors.InputError(f"the body is not JSON: {exc}"[:200]) from None
    if not isinstance(document, dict):
        raise errors.InputError("the body must be a JSON object (Alertmanager's webhook payload)")
    try:
        return Delivery.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = str(first["msg"]).removeprefix("Value error, ")
        if where == "version":
            message = "only webhook payload version 4 is understood"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise errors.InputError(f"{where}: {message}{more}") from None


@dataclass(frozen=True, slots=True)
class Destination:
    """A target as alerts are routed to it: its matcher sets and its rules."""

    name: str
    matchers: tuple[matchers.MatcherSet, ...]
    rules: Sequence[model.Rule]


@dataclass(frozen=True, slots=True)
class Routed:
    """An alert with the target and signal it speaks for."""

    target: str
    rule: model.Rule
    alert: Alert


@dataclass(frozen=True, slots=True)
class Unrouted:
    """An alert that reaches no decision, and why."""

    alert: Alert
    reason: model.Unrouted
    detail: str
    target: str | None = None  # the target it belongs to, when it is just not a signal there


def route(
    delivery: Delivery, destinations: Sequence[Destination]
) -> tuple[list[Routed], list[Unrouted]]:
    """Each alert's target and signal, or why it has none."""
    routed: list[Routed] = []
    unrouted: list[Unrouted] = []
    for alert in delivery.alerts:
        found = target_of(alert.labels, destinations)
        if not isinstance(found, Destination):
            reason, why = found
            unrouted.append(Unrouted(alert, reason, why))
            continue
        try:
            rule = rule_for(alert.name, alert.labels, alert.annotations, found.rules)
        except ValueError as exc:
            why = f"{found.name}'s, but {exc}"
            unrouted.append(Unrouted(alert, model.Unrouted.NOT_A_SIGNAL, why, found.name))
            continue
        routed.append(Routed(found.name, rule, alert))
    return routed, unrouted


def target_of(
    labels: Mapping[str, str], destinations: Sequence[Destination]
) -> Destination | tuple[model.Unrouted, str]:
    """The one target these labels say the alert belongs to, or why there is none."""
    named = labels.get(TARGET_LABEL)
    if named is not None:
        for destination in destinations:
            if destination.name == named:
                return destination
        return model.Unrouted.UNKNOWN_TARGET, f"{TARGET_LABEL}={named!r} is no target here"
    owners = [d for d in destinations if matchers.any_matches(d.matchers, labels)]
    if len(owners) == 1:
        return owners[0]
    if owners:
        names = ", ".join(d.name for d in owners)
        return model.Unrouted.AMBIGUOUS, f"matches the alert matchers of {names}"
    return model.Unrouted.NO_MATCH, f"no {TARGET_LABEL} label and no target's matchers match"


def rule_for(
    name: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    known: Sequence[model.Rule],
) -> model.Rule:
    """The target's rule of that name, or one made from the alert's own labels."""
    if not name:
        raise ValueError("the alert has no alertname")
    for rule in known:
        if rule.name == name:
            return rule
    try:
        severity, category, weight = rules.classify(labels)
    except ValueError as exc:
        raise ValueError(f"not a rule of this target, and {exc}") from None
    return model.Rule(
        name=name,
        expr="",
        severity=severity,
        category=category,
        weight=weight,
        summary=annotations.get("summary", ""),
        description=annotations.get("description", ""),
        threshold=annotations.get("threshold", ""),
        origin=model.Origin.ALERTMANAGER,
    )
