"""The approval gate's rules, as pure functions: may this person decide this approval now?

A rollback in ``approve`` mode (and a ``propose`` in any acting mode) waits for people. Who
may decide, how many must agree, and what an expired request becomes are policy, and policy is
kept pure here -- no journal, no clock -- so every case is a table test and the journal applies
the ruling in the same transaction it read the approval in (two clicks at once cannot both win).

A single deny ends the request (one "no" is enough to keep the service as it is); approvals
count distinct people on the allowlist, so ``required_approvals: 2`` is a two-person rule.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from watchdog import timefmt


class Status(enum.StrEnum):
    """Where an approval request stands."""

    PENDING = "pending"  # waiting for people
    APPROVED = "approved"  # enough approvals (or timed out with on_timeout: proceed)
    DENIED = "denied"  # someone on the allowlist said no
    EXPIRED = "expired"  # nobody decided in time and on_timeout is deny
    CANCELLED = "cancelled"  # overtaken: the incident resolved or the target was rolled back


class Refusal(enum.StrEnum):
    """Why a vote was not counted (the HTTP answer follows from it)."""

    NOT_FOUND = "not_found"  # no such approval
    FORBIDDEN = "forbidden"  # the voter is not on the allowlist
    DECIDED = "decided"  # the request was already approved, denied, expired or cancelled
    EXPIRED = "expired"  # the request timed out (settled at the next tick)
    DUPLICATE = "duplicate"  # this person already approved it
    REPLAY = "replay"  # the very same click or request, delivered again
    DISARMED = "disarmed"  # the target was already rolled back; an operator must re-arm it
    OVERTAKEN = "overtaken"  # the incident the request was about has resolved
    IN_FLIGHT = "in_flight"  # a rollback of the target is already running
    UNAVAILABLE = "unavailable"  # it cannot start now (systemd not connected, ...)


@dataclass(frozen=True, slots=True)
class Rules:
    """The approval settings, as the gate applies them."""

    timeout: float = 900.0
    on_timeout: str = "deny"  # or "proceed"
    required: int = 1
    approvers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Request:
    """One approval request as journaled."""

    id: int
    target: str
    incident: int | None
    requested_at: float
    expires_at: float
    required: int
    status: Status
    approved_by: tuple[str, ...] = ()  # allowlist names, in order of approval
    verdict: str = "rollback"  # what is asked: a rollback, or a proposal (non-critical)


@dataclass(frozen=True, slots=True)
class Vote:
    """One person's approve or deny, and through what it came."""

    approve: bool
    identities: tuple[str, ...]  # who, as the channel knows them (a Slack ID and name; a name)
    via: str  # "slack", "api", "cli"
    at: float


@dataclass(frozen=True, slots=True)
class Ruling:
    """What a vote did: counted (maybe changing the status) or refused, with the words why."""

    counted: bool
    status: Status  # the request's status after the vote
    message: str
    voter: str = ""  # the allowlist name the vote counted as ("" if refused before matching)
    refusal: Refusal | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What an operator's order (``POST /api/v1/rollback``) came to."""

    accepted: bool
    message: str
    refusal: Refusal | None = None
    incident: int | None = None


def voter_of(vote: Vote, rules: Rules) -> str | None:
    """The allowlist entry this voter is, or None."""
    return next((name for name in vote.identities if name in rules.approvers), None)


def judge(request: Request, vote: Vote, rules: Rules) -> Ruling:
    """Count ``vote`` on ``request``, or refuse it and say why."""
    who = next((name for name in vote.identities if name), "someone")
    if request.status is not Status.PENDING:
        return Ruling(
            False,
            request.status,
            f"approval #{request.id} was already {request.status.value}",
            refusal=Refusal.DECIDED,
        )
    if vote.at >= request.expires_at:
        return Ruling(
            False,
            request.status,
            f"approval #{request.id} expired at {timefmt.format_instant(request.expires_at)}",
            refusal=Refusal.EXPIRED,
        )
    voter = voter_of(vote, rules)
    if voter is None:
        return Ruling(
            False,
            request.status,
            f"{who} is not on the approvers list",
            refusal=Refusal.FORBIDDEN,
        )
    if not vote.approve:
        return Ruling(True, Status.DENIED, f"denied by {voter} ({vote.via})", voter=voter)
    if voter in request.approved_by:
        return Ruling(
            False,
            request.status,
            f"{voter} already approved #{request.id}; another approver is needed",
            voter=voter,
            refusal=Refusal.DUPLICATE,
        )
    approved = (*request.approved_by, voter)
    if len(approved) >= request.required:
        return Ruling(
            True, Status.APPROVED, f"approved by {', '.join(approved)} ({vote.via})", voter=voter
        )
    return Ruling(
        True,
        Status.PENDING,
        f"approved by {voter} ({vote.via}): {len(approved)} of {request.required}",
        voter=voter,
    )


def expiry(request: Request, now: float, rules: Rules) -> Ruling | None:
    """What a pending request becomes once its time is up, or None while it still waits."""
    if request.status is not Status.PENDING or now < request.expires_at:
        return None
    if request.verdict == "propose":  # non-critical: a person decides, never the clock
        return Ruling(True, Status.EXPIRED, "nobody decided in time; a proposal never proceeds")
    if rules.on_timeout == "proceed":
        return Ruling(True, Status.APPROVED, "nobody decided in time; on_timeout: proceed")
    return Ruling(True, Status.EXPIRED, "nobody decided in time; on_timeout: deny")


def progress(request: Request) -> str:
    """One line for people: where the request stands."""
    if request.status is Status.PENDING:
        return f"Awaiting approval ({len(request.approved_by)} of {request.required})"
    return f"Approval {request.status.value}"
