"""One tick for one target: sources -> evaluation -> decision -> gate -> journal, metrics, log.

The daemon calls ``Target.tick`` every ``interval``; it is the only place the stages meet, and
data passes between them only through function arguments. Alertmanager's alerts (kept in the
journal by ``POST /alertmanager``) join the evaluation as firing signals. A rollback decision in
``auto`` mode launches the runbook (``Target.launch``, provided by the daemon); if it cannot
start now (systemd not connected), the decision is journaled as not acted on and the next tick
asks again; in ``observe`` mode it is journaled as "would roll back"; in ``approve`` mode (and
for a ``propose`` in any acting mode) the gate journals an approval request with the decision,
and settles requests each tick.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from watchdog import (
    config,
    decision,
    evaluation,
    gate,
    journal,
    model,
    sources,
    telemetry,
)
from watchdog.sources import alertmanager, baseline, systemd_watch

log = structlog.get_logger("watchdog.pipeline")


STARTED = gate.STARTED
JOINED = gate.JOINED


def gate_outcome(
    decided: model.Decision, mode: model.Mode, blocked: str | None, *, joining: bool = False
) -> str:
    """What the gate made of an action: act (auto), record (observe), ask (approve, later).

    ``blocked`` says why auto mode cannot act right now; such an action is not taken, and the
    next evaluation asks again.
    """
    action = decided.action
    if action is model.Action.ROLLBACK:
        if mode is model.Mode.OBSERVE:
            return "would roll back (observe mode)"
        if mode is model.Mode.AUTO:
            if blocked is not None:
                return f"would roll back (auto mode, but {blocked}); asking again next time"
            return JOINED if joining else STARTED  # launched once the decision is journaled
        return "would roll back (approve mode, but no approval gate is running)"
    if action is model.Action.PROPOSE:
        if mode is model.Mode.OBSERVE:
            return "would ask a human to approve a rollback (observe mode)"
        return "would ask a human to approve a rollback (no approval gate is running)"
    if action is model.Action.NOTIFY:
        return "notified (log only)"
    return "none"


class Admission(Protocol):
    """Fleet mode's say on an automatic rollback (``runtime.fleet.FleetLink``): a switch slot
    of the group, a halted group, a partition. Asked only once the target would act."""

    async def admit(self, target: str, evaluated: model.Evaluation) -> str | None:
        """None: switch now (a slot is held). Otherwise why not yet: the next tick asks again."""

    async def withdraw(self, target: str) -> None:
        """The admitted switch did not start after all: give its slot back."""

    def observed(self, target: str, evaluated: model.Evaluation) -> None:
        """Every evaluation, acted on or not: what fires is told to the peers (no I/O here)."""


@dataclass(slots=True)
class Target:
    """A guarded target and what the loop remembers about it between ticks."""

    settings: config.TargetSettings
    rules: Sequence[model.Rule]
    policy: model.Policy
    mode: model.Mode
    source: sources.Source  # the metrics source (Prometheus, or none)
    store: journal.Journal
    recorder: telemetry.Recorder
    memory: model.EvaluationMemory = field(default_factory=lambda: model.EMPTY_MEMORY)
    state: model.TargetState = field(default_factory=model.TargetState)
    arming: journal.Arming | None = None  # as last read from the journal
    launch: gate.Launcher | None = None  # starts the runbook in auto mode
    watch: systemd_watch.SystemdWatch | None = None  # the D-Bus crash-loop signal, if watched
    gatekeeper: gate.Gate | None = None  # approvals and notifications; None: act or record only
    alerts_forget_after: float | None = None  # read Alertmanager's alerts from the journal
    fleet: Admission | None = None  # fleet mode: slots, halts, partitions
    comparator: baseline.Comparator | None = None  # against the fallback's own baseline
    release: model.Release | None = None  # what the primary ran at the last tick, if known
    clock: Callable[[], float] = time.time  # injected in tests

    @property
    def name(self) -> str:
        return self.settings.name

    async def tick(self, *, budget: float) -> model.Decision:
        """Evaluate and decide once, now; journal and export what changed.

        Sources get ``budget`` seconds; past it every signal is ``error`` (inconclusive), so a
        hung Prometheus is reported, never mistaken for a healthy or a failing service. The
        remembered state advances only once the journal has the decision: if the write fails,
        the next tick decides (and acts) again rather than forgetting.
        """
        started = time.perf_counter()
        at = self.clock()
        # one tick, one configuration: a reload swaps these between ticks, never within one
        mode, launch, policy, rules = self.mode, self.launch, self.policy, self.rules
        if not self.source.answers_rules:  # no metrics source: the watch and alerts only
            rules = []
        try:
            async with asyncio.timeout(budget):
                observation = await self.source.observe(self.settings, rules, at)
        except TimeoutError:
            observation = timed_out(rules, at, budget)
        failures = sum(1 for r in observation.results.values() if not r.ok) + (
            0 if observation.presence.ok else 1
        )
        evaluated_rules = rules
        await self._follow_arming()
        if self.watch is not None:  # systemd's own view: needs no Prometheus
            observation = with_systemd(observation, self.watch, at, since=self.state.armed_at)
            evaluated_rules = [*rules, self.watch.rule]
        evaluated, memory = evaluation.evaluate(
            self.name, evaluated_rules, observation, self.memory
        )
        # a binary caught mid-copy (unreadable) is no new release: the last one stands
        release = await asyncio.to_thread(release_of, self.settings) or self.release
        self.release = release
        if self.comparator is not None and self.source.answers_rules:
            activated = evaluated.activated_at or self.state.activated_at
            left = budget - (time.perf_counter() - started)  # one budget for the whole tick
            try:
                async with asyncio.timeout(max(0.0, left)):
                    compared = await self.comparator.signals(
                        at, activated, since=self.state.armed_at, release=release
                    )
            except TimeoutError:
                compared = self.comparator.unanswered(f"no answer within the tick's {budget:g}s")
            evaluated = dataclasses.replace(evaluated, signals=evaluated.signals + compared)
            for fetched in self.comparator.take_fresh():  # recorded when the primary deploys
                await asyncio.to_thread(self.store.record_baseline, self.name, fetched, at=at)
        if self.alerts_forget_after is not None:
            evaluated = evaluation.with_alerts(evaluated, await self._delivered_alerts(at))
        if self.fleet is not None:
            self.fleet.observed(self.name, evaluated)
        if release is not None:
            evaluated = dataclasses.replace(evaluated, release=release)
        decided, state = decision.decide(evaluated, policy, self.state)
        acting = decided.action is model.Action.ROLLBACK and mode is model.Mode.AUTO
        blocked = None
        if acting:
            blocked = "no executor is connected" if launch is None else launch.blocked()
        joining = acting and launch is not None and launch.in_flight()
        if acting and blocked is None and not joining and self.fleet is not None:
            blocked = await self.fleet.admit(self.name, evaluated)
        ask = self.gatekeeper.asks(decided, mode) if self.gatekeeper is not None else None
        if ask is not None and self.gatekeeper is not None:
            outcome = self.gatekeeper.asked_outcome()
        else:
            outcome = gate_outcome(decided, mode, blocked, joining=joining)
        # what the incident had been acted on before this decision (none if it is new)
        before = None
        if self.state.incident is not None and decided.incident is not model.IncidentChange.OPEN:
            before = self.state.incident.acted
        incident = await asyncio.to_thread(
            self.store.record,
            evaluated,
            decided,
            mode=mode,
            outcome=outcome,
            acted=blocked is None,
            ask=ask,
        )
        if blocked is not None:
            state = not_acted(state, before)
        await self._journal_commit(self.state, state)
        self.memory, self.state = memory, state
        if acting and blocked is None and launch is not None:
            order = gate.Order(incident, model.Trigger.AUTO, "rollback-watchdog", decided.reason)
            launched = launch(order)  # the one way into the executor
            if not launched.going:  # lost the executor since: ask again
                log.error("rollback not started", target=self.name, outcome=str(launched))
                if incident is not None:
                    await asyncio.to_thread(self.store.unact, incident, before)
                self.state = not_acted(self.state, before)
                if self.fleet is not None:
                    await self.fleet.withdraw(self.name)
        if self.gatekeeper is not None:
            await self.gatekeeper.decided(evaluated, decided, incident, mode=mode, outcome=outcome)
            pending = await self.gatekeeper.settle(self.name)
            self.recorder.approvals_pending.labels(self.name).set(pending)
        self.recorder.record_evaluation(
            evaluated,
            decided,
            duration=time.perf_counter() - started,
            armed=self.state.armed,
            source_errors=failures,
        )
        if decided.action is not model.Action.NONE:
            self.recorder.record_action(self.name, decided.action, outcome)
            log.warning(
                "decision",
                target=self.name,
                verdict=decided.verdict.value,
                action=decided.action.value,
                outcome=outcome,
                reason=decided.reason,
            )
        log.info(
            "evaluated",
            target=self.name,
            verdict=decided.verdict.value,
            score=decided.score,
            firing=list(decided.firing),
            incident=decided.incident.value,
            source_errors=failures,
        )
        return decided

    async def _delivered_alerts(self, at: float) -> list[model.ExternalAlert]:
        """Alertmanager's alerts for this target that still fire and were never acted on."""
        forget = self.alerts_forget_after or 0.0
        stored = await asyncio.to_thread(
            self.store.firing_alerts, self.name, seen_since=at - forget
        )
        # routed when kept, and again now: an alert kept by an older release or under other
        # matchers must still say by its labels that it is this target's
        here = alertmanager.Destination(self.name, self.settings.alert_matchers, self.rules)
        alerts = []
        for alert in stored:
            if alertmanager.target_of(alert.labels, [here]) is not here:
                continue
            try:
                rule = alertmanager.rule_for(
                    alert.alertname, alert.labels, alert.annotations, self.rules
                )
            except ValueError:  # the rules changed since it was kept: no longer a signal
                continue
            alerts.append(
                model.ExternalAlert(
                    rule=rule,
                    labels=model.labels_of(alert.labels),
                    starts_at=alert.starts_at,
                    fingerprint=alert.fingerprint,
                    last_seen=alert.last_seen,
                )
            )
        return alerts

    async def _follow_arming(self) -> None:
        """Pick up a re-arm (or disarm) made outside the loop, e.g. by ``rearm``, and what the
        loop guard must know of the runs since (they end outside the loop too)."""
        arming = await asyncio.to_thread(self.store.arming, self.name)
        if self.arming is not None and arming.said != self.arming.said:
            self.state = await asyncio.to_thread(self.store.target_state, self.name)
            log.warning("arming changed", target=self.name, armed=arming.armed, by=arming.by)
        self.arming = arming
        self.state = dataclasses.replace(
            self.state,
            last_switch_at=arming.last_switch_at,
            fallback_failed_at=arming.fallback_failed_at,
        )

    async def _journal_commit(self, before: model.TargetState, after: model.TargetState) -> None:
        """Journal the release commit when the decision committed the release or a new
        release reset it."""
        if (after.committed_at, after.committed_release) == (
            before.committed_at,
            before.committed_release,
        ):
            return
        await asyncio.to_thread(
            self.store.set_committed, self.name, after.committed_at, after.committed_release
        )
        if after.committed_at is not None:
            log.warning("release committed", target=self.name, activation=after.activated_at)
        else:
            log.warning("release commit reset by a new release", target=self.name)


def release_of(settings: config.TargetSettings) -> model.Release | None:
    """What the primary runs, as far as its files say (``primary.binary``): its resolved path,
    inode, size and modification time (a Nix-style store keeps mtimes, not paths); None without
    one, or when it cannot be read right now (the caller keeps the last one)."""
    binary = settings.primary.binary
    if binary is None:
        return None
    try:
        resolved = binary.resolve()
        stat = resolved.stat()
    except OSError:
        return None
    name = f"{resolved} (inode {stat.st_ino}, {stat.st_size} bytes, modified {stat.st_mtime_ns})"
    return model.Release(name=name, since=stat.st_mtime)


def timed_out(rules: Sequence[model.Rule], at: float, budget: float) -> model.Observation:
    """An observation in which every query failed because the sources ran out of time."""
    failed = model.QueryResult(error=f"the sources did not answer within {budget:g}s")
    return model.Observation(
        at=at,
        results={rule.name: failed for rule in rules},
        presence=failed,
        activation_failed=True,
    )


def with_systemd(
    observation: model.Observation,
    watch: systemd_watch.SystemdWatch,
    at: float,
    *,
    since: float | None = None,
) -> model.Observation:
    """The observation plus the systemd watch's crash-loop input (restarts from ``since`` on:
    the last re-arm); systemd's activation time stands in when Prometheus could not say when
    the primary started."""
    results = {**observation.results, watch.rule.name: watch.observe(at, since=since)}
    activated_at, failed = observation.activated_at, observation.activation_failed
    if activated_at is None or failed:
        from_systemd = watch.activated_at()
        if from_systemd is not None:
            activated_at, failed = from_systemd, False
    return dataclasses.replace(
        observation, results=results, activated_at=activated_at, activation_failed=failed
    )


def not_acted(state: model.TargetState, before: model.Verdict | None) -> model.TargetState:
    """The state as if the action had not been asked for: the next evaluation asks again."""
    if state.incident is None:
        return state
    return dataclasses.replace(state, incident=dataclasses.replace(state.incident, acted=before))
