"""The fleet's value types: what the store answers and the gate, the CLI and the metrics read.

Kept apart from the store so that reading them never loads PostgreSQL's driver (the daemon
loads psycopg only in fleet mode).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime

from watchdog import model


class Slot(enum.StrEnum):
    """What asking for a switch slot came to."""

    GRANTED = "granted"  # this member may switch now
    HELD = "held"  # it already holds one (a resumed switch)
    FULL = "full"  # max_parallel members of the group are switching: wait
    HALTED = "halted"  # a switch of the group failed; an operator must resume it
    PAUSED = "paused"  # a rollout's pause between two waves is not over yet


class Side(enum.StrEnum):
    """Which of a member's two units runs, as its systemd says."""

    PRIMARY = "primary"
    FALLBACK = "fallback"
    NEITHER = "neither"
    UNKNOWN = "unknown"  # no reading of systemd


@dataclass(frozen=True, slots=True)
class Member:
    """One node's target: what a lease, a slot and a run belong to."""

    node: str
    target: str

    def __str__(self) -> str:
        return f"{self.node}/{self.target}"


@dataclass(frozen=True, slots=True)
class Node:
    """One member as the fleet sees it."""

    member: Member
    group: str
    side: Side
    release: str | None
    seen_at: datetime
    lease_until: datetime
    lost: bool  # its lease ran out (by the database's clock)
    switching: bool  # it holds a slot
    firing: tuple[str, ...] = ()  # its signals that fired at its last heartbeat (alerts too)


@dataclass(frozen=True, slots=True)
class SlotHeld:
    member: Member
    taken_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as a member's own journal has it, copied into the store."""

    member: Member
    run_id: int
    trigger: model.Trigger
    status: model.RunStatus
    reason: str
    started_at: datetime
    ended_at: datetime | None
    release: str | None = None  # the member's release when it ran


@dataclass(frozen=True, slots=True)
class AuditLine:
    at: datetime
    member: Member
    event: str
    detail: str


@dataclass(frozen=True, slots=True)
class Summary:
    """A group's counts, for the metrics (one query)."""

    live: int
    lost: int
    switching: int
    halted: bool
    rollouts: tuple[tuple[str, int], ...] = ()  # (status, how many) of the group's rollouts
    wave_switches: int = 0  # members switched by rollouts so far


@dataclass(frozen=True, slots=True)
class Rollout:
    """The rest of a bad release's members, rolled back in waves."""

    group: str
    release: str
    status: str  # proposed | rolling | done
    reason: str
    proposed_at: datetime
    approved_by: str | None
    started_at: datetime | None
    next_at: datetime | None
    waves: int  # members switched by it so far


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """A group as ``fleet status`` shows it."""

    name: str
    halted_at: datetime | None
    halted_by: str | None
    halt_reason: str | None
    nodes: tuple[Node, ...]
    slots: tuple[SlotHeld, ...]
    runs: tuple[RunRecord, ...]
    audit: tuple[AuditLine, ...]
    incidents: tuple[Ticket, ...] = ()  # the open ones, then the latest closed ones
    rollouts: tuple[Rollout, ...] = ()  # bad releases rolled back in waves


class News(enum.StrEnum):
    """What a fleet notification says happened (``NOTIFY``'s payload, with the group)."""

    SLOT = "slot"  # a switch slot freed: a waiting member may take it
    HALTED = "halted"
    RESUMED = "resumed"
    JOINED = "joined"  # a member joined a fleet incident (its message lists one more)
    VOTED = "voted"  # a vote counted, the incident still pending
    DECIDED = "decided"  # approved, denied or expired: the members act on it (or do not)
    MESSAGE = "message"  # the incident's message was posted: members reply in its thread
    WAVE = "wave"  # a wave of the bad-release rollback was ordered


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification as heard on the fleet's channel."""

    group: str
    news: News
    incident: int | None = None

    def payload(self) -> str:
        return json.dumps({"group": self.group, "news": self.news.value, "incident": self.incident})

    @classmethod
    def parse(cls, payload: str) -> Notice | None:
        """None for a payload this version does not know (another version's news)."""
        try:
            found = json.loads(payload)
            incident = found.get("incident")
            return cls(
                str(found["group"]),
                News(found["news"]),
                int(incident) if incident is not None else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True, slots=True)
class Ticket:
    """A fleet incident as one member sees it: one per group and release while open."""

    id: int
    group: str
    release: str
    owner: Member  # its daemon posts and updates the incident's one message
    asks: bool  # an approval is asked (approve mode, or a proposal)
    status: str  # pending | approved | denied | expired | acting (automatic: nothing asked)
    required: int
    approved_by: tuple[str, ...]
    expires_at: datetime | None
    members: tuple[Member, ...]
    message: tuple[str, str] | None = None  # the chat's (channel, message id), once posted
    closed: bool = False  # nobody joins it any more (a later failure opens another)
    decided_by: str | None = None  # who approved or denied it ("rollback-watchdog": the clock)
    opened: bool = False  # this join opened it
    new_member: bool = False  # this join added the member

    @property
    def decided(self) -> bool:
        return self.status in ("approved", "denied", "expired")
