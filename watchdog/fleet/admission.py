"""What the fleet says to one member's automatic rollback, as words or a go-ahead: pure.

The store answers with a ``Slot``; this turns it into the reason the decision journals ("waiting
for a switch slot: 1 of 1 taken by node-b/lavalink"). Cut off from the store, a member still
guards itself, but only on local evidence of instability (a crash loop seen on D-Bus, the
service down) and only once until the store is back: nothing that needs the fleet's view
(another member's slot, a wave, a fleet approval) can be known while cut off.
"""

from __future__ import annotations

from collections.abc import Sequence

from watchdog import model
from watchdog.fleet.values import Member, Slot

UPSTREAM = frozenset({model.Category.SOURCE_FAILURE, model.Category.PERFORMANCE})
LOCAL = frozenset({model.Category.INSTABILITY})  # evidence a member may act on while cut off
CUT_OFF_SWITCHES = 1  # switches a node may make while the store is unreachable


def slot_answer(
    slot: Slot, holders: Sequence[Member], *, max_parallel: int, halt_reason: str | None = None
) -> str | None:
    """None: switch now. Otherwise why not yet (the next evaluation asks again)."""
    if slot in (Slot.GRANTED, Slot.HELD):
        return None
    if slot is Slot.HALTED:
        why = f" ({halt_reason})" if halt_reason else ""
        return (
            f"the fleet group is halted{why}: an operator must run `rollback-watchdog fleet resume`"
        )
    if slot is Slot.PAUSED:
        return "waiting for the pause between two waves of the rollout to end"
    names = ", ".join(str(m) for m in holders) or "-"
    return f"waiting for a fleet switch slot: {len(holders)} of {max_parallel} taken by {names}"


def local_evidence(evaluated: model.Evaluation) -> tuple[str, ...]:
    """The firing critical signals that are about this host alone (instability)."""
    return tuple(
        s.name
        for s in evaluated.signals
        if s.state is model.SignalState.FIRING
        and s.rule.category in LOCAL
        and s.rule.severity is model.Severity.CRITICAL
    )


def cut_off_answer(evaluated: model.Evaluation, switched: int) -> str | None:
    """While the store is unreachable: None to switch on local evidence, else why not."""
    local = local_evidence(evaluated)
    if not local:
        return (
            "the fleet store is unreachable; while cut off only local evidence of instability "
            "(a crash loop, the service down) acts"
        )
    if switched >= CUT_OFF_SWITCHES:
        return "the fleet store is unreachable and this node already switched once while cut off"
    return None


def upstream_suspects(evaluated: model.Evaluation) -> tuple[str, ...]:
    """The firing critical signals an upstream outage could explain (audio sources, latency),
    when those are all that fire critically; () when anything else critical fires too (a
    crash is never upstream)."""
    critical = [
        s
        for s in evaluated.signals
        if s.state is model.SignalState.FIRING and s.rule.severity is model.Severity.CRITICAL
    ]
    if not critical or any(s.rule.category not in UPSTREAM for s in critical):
        return ()
    return tuple(s.name for s in critical)


def upstream_answer(peers: Sequence[tuple[Member, Sequence[str]]]) -> str | None:
    """None when no member on the fallback sees the same; else the warning that holds the
    switch back: it is upstream, not the release."""
    if not peers:
        return None
    seen = "; ".join(f"{member} sees {', '.join(names)}" for member, names in peers)
    return f"upstream, not the release: on the fallback too, {seen}; not rolling back"


def firing_names(evaluated: model.Evaluation) -> tuple[str, ...]:
    """Every signal that fires now (what a member tells its peers)."""
    return tuple(s.name for s in evaluated.signals if s.state is model.SignalState.FIRING)
