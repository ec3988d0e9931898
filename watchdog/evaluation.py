"""Query results -> signal states: Prometheus's own alert state machine, as a pure function.

Each alert rule's ``expr`` was run as an instant query; here every resulting series goes through
exactly the ``for`` / ``keep_firing_for`` state machine of Prometheus's ``AlertingRule.Eval``
(ok -> pending -> firing -> resolved), so a rule behaves the same here, in ``promtool test
rules`` and in a Prometheus that loads the file. Two cases are the watchdog's own, because
missing data must never read as a failing service:

- the target's presence query returned nothing: every signal is ``nodata``, and the state
  machine advances as Prometheus would on an empty result (pending alerts are forgotten);
- a query failed: that signal is ``error``, and its state is left exactly as it was, as
  Prometheus leaves it when a rule's query fails.

A signal the watchdog reads from systemd itself (origin ``systemd``) goes through the same
state machine but ignores the presence query: it must work while Prometheus is down.

No I/O, no clock: the instant comes in with the observation, the memory goes in and out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from watchdog import model

_NO_POINTS: tuple[model.Point, ...] = ()


def evaluate(
    target: str,
    rules: Sequence[model.Rule],
    observation: model.Observation,
    memory: model.EvaluationMemory,
) -> tuple[model.Evaluation, model.EvaluationMemory]:
    """Evaluate every rule at ``observation.at``; return the evaluation and the next memory."""
    now = observation.at
    presence = observation.presence
    no_data = presence.ok and not presence.points
    signals: list[model.Signal] = []
    next_memory: dict[str, model.RuleMemory] = {}
    for rule in rules:
        previous = memory.get(rule.name, _EMPTY)
        scraped = rule.origin is model.Origin.PROMETHEUS  # the presence query speaks for it
        if scraped and not presence.ok:
            next_memory[rule.name] = previous
            signals.append(
                model.Signal(
                    rule, model.SignalState.ERROR, detail=f"presence query failed: {presence.error}"
                )
            )
            continue
        result = observation.results.get(rule.name)
        if scraped and no_data:
            next_memory[rule.name] = advance(rule, _NO_POINTS, previous, now)
            signals.append(
                model.Signal(
                    rule,
                    model.SignalState.NODATA,
                    detail="no data: the presence query returned nothing",
                )
            )
            continue
        if result is None or not result.ok:
            next_memory[rule.name] = previous
            detail = result.error if result is not None else "not queried"
            signals.append(model.Signal(rule, model.SignalState.ERROR, detail=detail or ""))
            continue
        if len({point.labels for point in result.points}) != len(result.points):
            # Prometheus fails such a rule too: two series, one alert identity
            next_memory[rule.name] = previous
            detail = "several series with the same labels once __name__ is dropped"
            signals.append(model.Signal(rule, model.SignalState.ERROR, detail=detail))
            continue
        current = advance(rule, result.points, previous, now)
        next_memory[rule.name] = current
        signals.append(signal_of(rule, current))
    evaluation = model.Evaluation(
        target=target,
        at=now,
        signals=tuple(signals),
        activated_at=observation.activated_at,
        activation_failed=observation.activation_failed,
    )
    return evaluation, MappingProxyType(next_memory)


def with_alerts(
    evaluation: model.Evaluation, alerts: Sequence[model.ExternalAlert]
) -> model.Evaluation:
    """The evaluation plus what Alertmanager says is firing.

    An alert Alertmanager delivered has been through Prometheus's own ``for`` already, so the
    signal of its name fires when the watchdog's own evaluation cannot say better: when it is
    pending (not yet through the ``for`` here), has no data or failed (Prometheus does not
    answer the watchdog). When the watchdog's own fresh query says ``ok``, that wins: a
    notification may be minutes old (``resolved`` comes a ``group_interval`` later), and stale
    news must not roll back a healthy service. A signal already firing keeps its own value; an
    alert that is no rule of ours becomes a signal of its own.
    """
    if not alerts:
        return evaluation
    by_name: dict[str, model.ExternalAlert] = {}
    for alert in sorted(alerts, key=lambda a: a.starts_at):  # the oldest speaks for the name
        by_name.setdefault(alert.rule.name, alert)
    signals: list[model.Signal] = []
    for signal in evaluation.signals:
        delivered = by_name.pop(signal.name) if signal.name in by_name else None
        if delivered is None or signal.state in _OWN_ANSWER_WINS:
            signals.append(signal)
        else:
            signals.append(_delivered(signal.rule, delivered))
    signals += [_delivered(alert.rule, alert) for alert in by_name.values()]
    return dataclasses.replace(evaluation, signals=tuple(signals))


_OWN_ANSWER_WINS = (model.SignalState.OK, model.SignalState.FIRING)


def _delivered(rule: model.Rule, alert: model.ExternalAlert) -> model.Signal:
    return model.Signal(
        rule,
        model.SignalState.FIRING,
        labels=alert.labels,
        active_since=alert.starts_at,
        detail="firing in Alertmanager",
        evidence_at=alert.last_seen if alert.last_seen is not None else alert.starts_at,
    )


def advance(
    rule: model.Rule,
    points: Sequence[model.Point],
    previous: model.RuleMemory,
    now: float,
) -> model.RuleMemory:
    """One step of Prometheus's alert state machine for one rule's series."""
    hold = rule.for_seconds
    keep_for = rule.keep_firing_for_seconds
    current: dict[model.Labels, model.AlertMemory] = {}
    for point in points:
        known = previous.get(point.labels)
        if known is None:
            active_at, firing, fired_at = now, False, None
        else:
            active_at, firing, fired_at = known.active_at, known.firing, known.fired_at
        if not firing and now - active_at >= hold:
            firing, fired_at = True, now
        current[point.labels] = model.AlertMemory(
            active_at=active_at, firing=firing, fired_at=fired_at, value=point.value
        )
    for labels, known in previous.items():
        if labels in current or not known.firing or keep_for <= 0:
            continue  # pending alerts vanish at once; firing ones resolve unless kept
        since = now if known.keep_firing_since is None else known.keep_firing_since
        if now - since < keep_for:
            current[labels] = model.AlertMemory(
                active_at=known.active_at,
                firing=True,
                fired_at=known.fired_at,
                keep_firing_since=since,
                value=known.value,
            )
    return MappingProxyType(current) if current else _EMPTY


def signal_of(rule: model.Rule, memory: model.RuleMemory) -> model.Signal:
    """Summarise a rule's series into one signal: its worst series speaks for it.

    Firing beats pending; among equals, the series active longest (it decides warm-up), then
    the highest value.
    """
    best: tuple[model.Labels, model.AlertMemory] | None = None
    for labels, alert in memory.items():
        if best is None or _worse(alert, best[1]):
            best = (labels, alert)
    if best is None:
        return model.Signal(rule, model.SignalState.OK)
    labels, alert = best
    state = model.SignalState.FIRING if alert.firing else model.SignalState.PENDING
    return model.Signal(
        rule,
        state,
        value=alert.value,
        labels=labels,
        active_since=alert.active_at,
        kept_since=alert.keep_firing_since,
    )


def _worse(candidate: model.AlertMemory, incumbent: model.AlertMemory) -> bool:
    if candidate.firing != incumbent.firing:
        return candidate.firing
    if candidate.active_at != incumbent.active_at:
        return candidate.active_at < incumbent.active_at
    return _sortable(candidate.value) > _sortable(incumbent.value)


def _sortable(value: float) -> float:
    return -math.inf if math.isnan(value) else value


_EMPTY: Mapping[model.Labels, model.AlertMemory] = MappingProxyType({})
