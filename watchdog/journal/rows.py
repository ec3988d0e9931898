"""The journal's read models: frozen rows, as the stages, the CLI and the report read them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from watchdog import approval as gate_rules
from watchdog import model


@dataclass(frozen=True, slots=True)
class Arming:
    """Whether a target may be acted on, and who said so when; with the loop guard's inputs
    (its last automatic switch, the last time its fallback failed) and its release commit."""

    armed: bool
    changed_at: float | None = None
    by: str | None = None
    last_switch_at: float | None = None
    fallback_failed_at: float | None = None
    committed_at: float | None = None
    committed_release: str | None = None

    @property
    def said(self) -> tuple[bool, float | None, str | None]:
        """The arming itself: who armed or disarmed it when (a change means a fresh start)."""
        return self.armed, self.changed_at, self.by


@dataclass(frozen=True, slots=True)
class RunRow:
    """One execution of the rollback runbook."""

    id: int
    target: str
    incident_id: int | None
    trigger: model.Trigger
    initiated_by: str
    reason: str
    started_at: float
    finished_at: float | None
    status: model.RunStatus
    outcome: str
    data: str

    def __post_init__(self) -> None:  # the columns hold the enums' values
        object.__setattr__(self, "trigger", model.Trigger(self.trigger))
        object.__setattr__(self, "status", model.RunStatus(self.status))

    @property
    def facts(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.data)
        return loaded


@dataclass(frozen=True, slots=True)
class StepRow:
    """One step of a run, as journaled before and after it ran."""

    id: int
    run_id: int
    seq: int
    name: str
    started_at: float
    finished_at: float | None
    status: model.StepStatus
    detail: str

    def __post_init__(self) -> None:  # the column holds the enum's value
        object.__setattr__(self, "status", model.StepStatus(self.status))


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """An incident as ``status`` shows it."""

    id: int
    target: str
    opened_at: float
    closed_at: float | None
    status: str
    verdict: str
    acted: str | None
    reason: str
    origin: str = "decision"  # or "order": opened by a person's rollback order
    category: str | None = None  # an order's: manual | security


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """A decision that asked for an action, and what came of it."""

    id: int
    incident_id: int | None
    target: str
    at: float
    verdict: str
    action: str
    mode: str
    outcome: str
    reason: str
    ordered_by: str | None = None  # an order's: the person
    ordered_via: str | None = None  # an order's: cli | api | slack


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert of a delivery, routed to its target, as the journal keeps it."""

    fingerprint: str
    starts_at: float
    target: str
    alertname: str
    status: str  # firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    last_seen: float | None = None  # as read back: its latest delivery


@dataclass(frozen=True, slots=True)
class Ingested:
    """What one delivery changed: alerts new to us, re-deliveries, and resolutions; and the
    new ones dropped because ``max_alerts`` were already kept."""

    new_firing: tuple[AlertRecord, ...] = ()
    repeated: int = 0
    resolved: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class UnroutedRecord:
    """An alert that reaches no decision, as the journal keeps it (``status`` shows them)."""

    fingerprint: str
    starts_at: float
    alertname: str
    status: str  # firing | resolved
    reason: model.Unrouted
    detail: str
    labels: dict[str, str]
    target: str | None = None
    last_seen: float | None = None
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class ApprovalAsk:
    """Ask people to approve the decision being recorded."""

    expires_at: float
    required: int


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    """An approval request and where it stands."""

    id: int
    incident_id: int | None
    target: str
    requested_at: float
    expires_at: float
    required: int
    verdict: str
    reason: str
    status: str
    approved_by: str
    decided_at: float | None
    decided_by: str | None
    outcome: str
    launched: int

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(json.loads(self.approved_by))

    def request(self) -> gate_rules.Request:
        return gate_rules.Request(
            id=self.id,
            target=self.target,
            incident=self.incident_id,
            requested_at=self.requested_at,
            expires_at=self.expires_at,
            required=self.required,
            status=gate_rules.Status(self.status),
            approved_by=self.approvers,
            verdict=self.verdict,
        )


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One thing a person (or the gate on their behalf) asked for, and whether it was taken."""

    id: int
    at: float
    via: str
    actor: str
    action: str
    approval_id: int | None
    target: str | None
    accepted: int
    detail: str
    nonce: str | None


@dataclass(frozen=True, slots=True)
class SignalRecord:
    """One signal of a journaled verdict change: what the report's root cause lists."""

    name: str
    state: model.SignalState
    value: float | None
    labels: Mapping[str, str]
    detail: str
    threshold: str = ""  # the rule's, as journaled with it (schema 6; "" before)
    for_seconds: float = 0.0

    @classmethod
    def of(cls, kept: Mapping[str, Any]) -> SignalRecord:
        """From the JSON the journal keeps (rows older than schema 6 have no threshold)."""
        value = kept.get("value")
        return cls(
            name=str(kept["name"]),
            state=model.SignalState(kept["state"]),
            value=float(value) if isinstance(value, int | float) else None,
            labels=dict(kept.get("labels") or {}),
            detail=str(kept.get("detail") or ""),
            threshold=str(kept.get("threshold") or ""),
            for_seconds=float(kept.get("for_seconds") or 0.0),
        )


@dataclass(frozen=True, slots=True)
class EvaluationRow:
    """A verdict change: only evaluations that changed the verdict are journaled."""

    at: float
    verdict: model.Verdict
    score: float
    reason: str
    firing: tuple[str, ...]
    signals: tuple[SignalRecord, ...] = ()  # with its signals when asked for them

    def summary(self) -> dict[str, Any]:
        """The change as the status document shows it (no signals)."""
        return {
            "at": self.at,
            "verdict": self.verdict.value,
            "score": self.score,
            "reason": self.reason,
            "firing": list(self.firing),
        }


@dataclass(frozen=True, slots=True)
class LatestRow:
    """A target's latest evaluation, whatever its verdict: how fresh the daemon's word is."""

    at: float
    verdict: model.Verdict
    score: float
    reason: str
    pid: int  # the daemon process that evaluated ...
    started: int | None = None  # ... and when it started: a pid can be reused, or namespaced


@dataclass(frozen=True, slots=True)
class ProbeTurn:
    """When the synthetic probes turned from passing to failing, or back."""

    at: float
    healthy: bool
    detail: str  # the failing probes, or "all passed"
