"""Signal states + policy + memory -> a verdict, an action and a reason, as a pure function.

This is the runbook's "when to roll back" written as code (docs/architecture.md, decision policy):

- any critical signal firing -> ``rollback``;
- firing warnings whose weights add up to ``escalate_score`` -> ``propose`` (a human decides);
- any warning firing -> ``warn`` (notify only: non-critical means "consider fixes first");
- otherwise any signal without data or with a failed query -> ``inconclusive``: a notice once it
  lasted ``inconclusive_after``, never an action, because missing data is not evidence;
- otherwise ``hold``.

Around that: during ``warmup`` after the primary became active only instability signals count,
and a non-instability signal counts only once its ``for`` has elapsed *after* warm-up, so a slow
first minute never causes a rollback later. After an operator re-armed the target only evidence
newer than the re-arm counts, whatever its source: a rule whose ``for`` elapsed after it, an
alert whose firing began or was delivered again after it -- what was already seen before the
rollback (or while disarmed) must never start a second one. A disarmed target (after a
rollback) never yields an action. An incident is opened by the first non-hold verdict and
closed by hold; each verdict level acts once per incident, and for ``cooldown`` after an
incident closed, a new incident only acts if it is worse than the last one (escalation always
breaks through).

Two things turn an automatic rollback into a proposal that a human decides, and the reason says
which: the loop guard (the fallback failed within ``cooldown``, or an automatic switch already
ran within it: never a ping-pong, whatever fires) and the release commit (the primary ran
``commit_after`` since its activation without an incident: rolling back days later may lose what
the new version wrote; a new activation starts a new bake).

No I/O, no clock: the instant is ``evaluation.at``; state goes in and comes out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from watchdog import model, timefmt

_ACTIONS = {
    model.Verdict.ROLLBACK: model.Action.ROLLBACK,
    model.Verdict.PROPOSE: model.Action.PROPOSE,
    model.Verdict.WARN: model.Action.NOTIFY,
    model.Verdict.INCONCLUSIVE: model.Action.NOTIFY,
}
_NO_DATA = (model.SignalState.NODATA, model.SignalState.ERROR)
# labels that are noise in a reason: scrape identity, and the rule's own labels on an alert
_SCRAPE_LABELS = frozenset(
    {
        "__name__",
        "job",
        "instance",
        "target",
        "alertname",
        "severity",
        "rollback_category",
        "rollback_weight",
    }
)


def decide(
    evaluation: model.Evaluation,
    policy: model.Policy,
    state: model.TargetState,
) -> tuple[model.Decision, model.TargetState]:
    """Decide on one evaluation; return the decision and the target's next state."""
    now = evaluation.at
    activated = evaluation.activated_at
    if activated is None:
        activated = state.activated_at  # the query had no answer: the last one still holds
    counted, ignored, warmup_end = _count(evaluation, policy, activated)
    counted, stale = _newer_than_rearm(counted, state.armed_at, now)
    critical = [s for s in counted if s.rule.severity is model.Severity.CRITICAL]
    warnings = [s for s in counted if s.rule.severity is model.Severity.WARNING]
    score = sum(s.rule.weight for s in warnings)
    missing = [s for s in evaluation.signals if s.state in _NO_DATA]
    uncompared = [s for s in missing if s.rule.origin is model.Origin.BASELINE]
    missing = [s for s in missing if s.rule.origin is not model.Origin.BASELINE]

    if critical:
        verdict = model.Verdict.ROLLBACK
        reason = "critical: " + "; ".join(describe(s) for s in critical)
        firing = critical + warnings
    elif warnings and score >= policy.escalate_score:
        verdict = model.Verdict.PROPOSE
        reason = (
            f"warnings score {_number(score)} >= escalate_score {_number(policy.escalate_score)}: "
            + "; ".join(describe(s) for s in warnings)
        )
        firing = warnings
    elif warnings:
        verdict = model.Verdict.WARN
        reason = (
            f"warning (score {_number(score)} < escalate_score "
            f"{_number(policy.escalate_score)}): " + "; ".join(describe(s) for s in warnings)
        )
        firing = warnings
    elif missing:
        verdict = model.Verdict.INCONCLUSIVE
        reason = (
            f"no evidence from {len(missing)} of {len(evaluation.signals)} signals: "
            + _summarise_missing(missing)
        )
        firing = []
    else:
        verdict = model.Verdict.HOLD
        reason = f"all {len(evaluation.signals) - len(uncompared)} signals quiet"
        if uncompared:  # no baseline or too few samples: said, never a verdict of its own
            reason += "; not compared with the fallback: " + uncompared[0].detail
        firing = []
    if ignored and warmup_end is not None:
        until = (
            "the activation time is known again (its query failed)"
            if math.isinf(warmup_end)
            else timefmt.format_instant(warmup_end)
        )
        reason += f"; warm-up until {until} ignores " + ", ".join(s.name for s in ignored)
    if stale and state.armed_at is not None:
        reason += (
            f"; re-armed at {timefmt.format_instant(state.armed_at)}: evidence from before "
            "ignored (" + ", ".join(s.name for s in stale) + ")"
        )
    ignored += stale

    inconclusive_since = (
        (state.inconclusive_since if state.inconclusive_since is not None else now)
        if verdict is model.Verdict.INCONCLUSIVE
        else None
    )
    carried = dataclasses.replace(
        state, inconclusive_since=inconclusive_since, activated_at=activated
    )
    if not state.armed:
        decision = model.Decision(
            target=evaluation.target,
            at=now,
            verdict=verdict,
            action=model.Action.NONE,
            reason="disarmed after a rollback (re-arm to act again); " + reason,
            score=score,
            firing=tuple(s.name for s in firing),
            ignored=tuple(s.name for s in ignored),
        )
        return decision, carried  # the fallback runs: no release bakes meanwhile

    action, change, incident, reason = _act(verdict, reason, state, policy, now, inconclusive_since)
    last_closed_at, last_closed_verdict = state.last_closed_at, state.last_closed_verdict
    if change is model.IncidentChange.CLOSE and state.incident is not None:
        last_closed_at, last_closed_verdict = now, state.incident.verdict
    next_state = _committed(
        dataclasses.replace(
            carried,
            incident=incident,
            last_closed_at=last_closed_at,
            last_closed_verdict=last_closed_verdict,
        ),
        policy,
        activated,
        now,
        evaluation.release,
    )
    if action is model.Action.ROLLBACK:
        action, reason = _guarded(reason, next_state, policy, now)
    decision = model.Decision(
        target=evaluation.target,
        at=now,
        verdict=verdict,
        action=action,
        reason=reason,
        score=score,
        firing=tuple(s.name for s in firing),
        incident=change,
        ignored=tuple(s.name for s in ignored),
    )
    return decision, next_state


def _committed(
    state: model.TargetState,
    policy: model.Policy,
    activated: float | None,
    now: float,
    release: model.Release | None,
) -> model.TargetState:
    """The release commit after this decision (``state`` already holds its incident).

    A new release of the primary (a deploy) starts a new bake; the release is committed once
    it has run ``commit_after`` since its activation and its last incident, with none open.
    Without a release identity each activation counts as one. Missing data is no incident: an
    inconclusive one neither blocks nor restarts the bake.
    """
    if policy.commit_after is None or activated is None:
        return state
    key = release.name if release is not None else f"started {timefmt.format_instant(activated)}"
    if state.committed_at is not None and state.committed_release == key:
        return state
    if state.committed_at is not None:  # committed, but another release runs now
        state = dataclasses.replace(state, committed_at=None, committed_release=None)
    if state.incident is not None and state.incident.verdict is not model.Verdict.INCONCLUSIVE:
        return state
    # a release swapped in under a process that still runs the old one bakes from the swap
    quiet_since = max(activated, release.since) if release is not None else activated
    closed = state.last_closed_verdict
    if state.last_closed_at is not None and closed is not None and closed is not _QUIET:
        quiet_since = max(quiet_since, state.last_closed_at)
    if now - quiet_since < policy.commit_after:
        return state
    return dataclasses.replace(state, committed_at=now, committed_release=key)


_QUIET = model.Verdict.INCONCLUSIVE  # an incident of missing data only: no evidence either way


def _guarded(
    reason: str, state: model.TargetState, policy: model.Policy, now: float
) -> tuple[model.Action, str]:
    """An automatic rollback, unless the loop guard or the release commit turns it into a
    proposal: then a human decides, and the reason says why."""
    why = not_automatic(state, policy, now)
    if why is None:
        return model.Action.ROLLBACK, reason
    return model.Action.PROPOSE, f"{reason}; {why}"


def not_automatic(state: model.TargetState, policy: model.Policy, now: float) -> str | None:
    """Why a switch of this target must not happen without a person now, or None: the loop
    guard (its fallback failed within the cooldown; a switch not ordered by an operator already
    ran within it) and the release commit. Fleet rollouts ask it too."""
    cooldown = policy.cooldown
    failed = state.fallback_failed_at
    if failed is not None and now - failed < cooldown:
        return (
            f"loop guard: the fallback failed at {timefmt.format_instant(failed)} "
            f"(within the {timefmt.format_duration(cooldown)} cooldown, until "
            f"{timefmt.format_instant(failed + cooldown)}): not switching to it automatically, "
            "a human decides"
        )
    switched = state.last_switch_at
    if switched is not None and now - switched < cooldown:
        return (
            f"loop guard: a switch not ordered by an operator already ran at "
            f"{timefmt.format_instant(switched)} (one per "
            f"{timefmt.format_duration(cooldown)} cooldown, until "
            f"{timefmt.format_instant(switched + cooldown)}): a human decides"
        )
    if state.committed_at is not None and policy.commit_after is not None:
        return (
            f"release committed at {timefmt.format_instant(state.committed_at)} "
            f"(it ran {timefmt.format_duration(policy.commit_after)} without an incident): "
            "rolling back now may lose what it wrote, a human decides"
        )
    return None


def _count(
    evaluation: model.Evaluation, policy: model.Policy, activated: float | None
) -> tuple[list[model.Signal], list[model.Signal], float | None]:
    """Split firing signals into those that count and those warm-up ignores.

    Without an activation time warm-up is over, unless the activation query just failed and
    none was ever known: then only instability counts, since missing data is no evidence.
    """
    if activated is not None:
        warmup_end: float | None = activated + policy.warmup
    elif evaluation.activation_failed:
        warmup_end = math.inf
    else:
        warmup_end = None
    counted: list[model.Signal] = []
    ignored: list[model.Signal] = []
    for signal in evaluation.signals:
        if signal.state is not model.SignalState.FIRING:
            continue
        if warmup_end is None or signal.rule.category is model.Category.INSTABILITY:
            counted.append(signal)
            continue
        since = signal.active_since if signal.active_since is not None else evaluation.at
        # The condition must hold for its whole `for` after warm-up, not partly inside it;
        # a signal kept firing by keep_firing_for was last true at `kept_since`.
        last_true = signal.kept_since if signal.kept_since is not None else evaluation.at
        if last_true - max(since, warmup_end) >= signal.rule.for_seconds:
            counted.append(signal)
        else:
            ignored.append(signal)
    return counted, ignored, warmup_end


def _newer_than_rearm(
    counted: list[model.Signal], armed_at: float | None, now: float
) -> tuple[list[model.Signal], list[model.Signal]]:
    """Split counted signals into those with evidence newer than the re-arm and those without.

    A delivered alert is new if its firing began, or it was delivered again, at or after the
    re-arm. A rule's own state is new once its expression reads only data from after the
    re-arm (its range windows and offsets, ``lookback_seconds``, have passed) and its condition
    has then held for its whole ``for``, like warm-up: a ``changes(x[15m]) >= 3`` still
    counting restarts from before the rollback is no new evidence. A rule kept firing by
    ``keep_firing_for`` was last true at ``kept_since``.
    """
    if armed_at is None:
        return counted, []
    fresh: list[model.Signal] = []
    stale: list[model.Signal] = []
    for signal in counted:
        since = signal.active_since if signal.active_since is not None else now
        if signal.evidence_at is not None:
            newer = max(since, signal.evidence_at) >= armed_at
        else:
            clean = armed_at + signal.rule.lookback_seconds  # its data all from after
            last_true = signal.kept_since if signal.kept_since is not None else now
            newer = last_true - max(since, clean) >= signal.rule.for_seconds
        (fresh if newer else stale).append(signal)
    return fresh, stale


def _act(
    verdict: model.Verdict,
    reason: str,
    state: model.TargetState,
    policy: model.Policy,
    now: float,
    inconclusive_since: float | None,
) -> tuple[model.Action, model.IncidentChange, model.IncidentState | None, str]:
    """Incident bookkeeping and the action this verdict earns, once per incident level."""
    incident = state.incident
    if verdict is model.Verdict.HOLD:
        if incident is None:
            return model.Action.NONE, model.IncidentChange.NONE, None, reason
        return model.Action.NONE, model.IncidentChange.CLOSE, None, reason

    change = model.IncidentChange.NONE
    if incident is None:
        carried = None
        cooling = (
            state.last_closed_at is not None
            and state.last_closed_verdict is not None
            and now - state.last_closed_at < policy.cooldown
        )
        if cooling and state.last_closed_verdict is not None:
            carried = state.last_closed_verdict  # its actions count as done for the cooldown
        incident = model.IncidentState(opened_at=now, verdict=verdict, acted=carried)
        change = model.IncidentChange.OPEN
    elif verdict.rank > incident.verdict.rank:
        incident = model.IncidentState(incident.opened_at, verdict, incident.acted)
        change = model.IncidentChange.ESCALATE

    if incident.acted is not None and verdict.rank <= incident.acted.rank:
        if change is model.IncidentChange.OPEN:
            closed = state.last_closed_at if state.last_closed_at is not None else now
            until = closed + policy.cooldown
            reason += f"; cooldown until {timefmt.format_instant(until)}: no new action"
        return model.Action.NONE, change, incident, reason

    action = _ACTIONS[verdict]
    if verdict is model.Verdict.INCONCLUSIVE:
        since = inconclusive_since if inconclusive_since is not None else now
        if now - since < policy.inconclusive_after:
            return model.Action.NONE, change, incident, reason
        reason += f"; inconclusive for {timefmt.format_duration(now - since)}"
    incident = model.IncidentState(incident.opened_at, incident.verdict, verdict)
    return action, change, incident, reason


def describe(signal: model.Signal) -> str:
    """One signal in words: name, value, threshold and since when."""
    parts = [f"{signal.name} {signal.state.value}"]
    labels = ", ".join(f'{k}="{v}"' for k, v in signal.labels if k not in _SCRAPE_LABELS)
    if labels:
        parts[0] += f" {{{labels}}}"
    if signal.value is not None:
        parts.append(f"value {_number(signal.value)}")
    threshold = signal.rule.threshold
    if signal.rule.for_seconds and "for" not in threshold:
        threshold = f"{threshold} for {timefmt.format_duration(signal.rule.for_seconds)}".strip()
    if threshold:
        parts.append(f"threshold {threshold}")
    if signal.active_since is not None:
        parts.append(f"since {timefmt.format_instant(signal.active_since)}")
    if signal.state is model.SignalState.FIRING and signal.detail:
        parts.append(signal.detail)  # where the evidence came from, e.g. Alertmanager
    return ", ".join(parts)


def _summarise_missing(signals: Iterable[model.Signal]) -> str:
    by_detail: dict[str, list[str]] = {}
    for signal in signals:
        by_detail.setdefault(signal.detail or signal.state.value, []).append(signal.name)
    return "; ".join(
        f"{detail} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
        for detail, names in by_detail.items()
    )


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):  # e.g. histogram_quantile in the +Inf bucket; int() would raise
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"
