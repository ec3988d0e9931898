"""What an approval channel is: a chat where people see the incident and press Approve or Deny.

A channel has two halves. Outbound, it is a notifier (``notify.Notifier``): it posts and updates
the incident's card. Inbound, it is a ``Channel``: the HTTP route its clicks arrive on, how a
request is verified (before anything is parsed: a signature over the raw body) and how a
verified request is read into a ``Click``. The listener serves every channel's route the same
way and hands each click to the gate as a vote. Slack is one channel (``notify.slack``); a
Discord or Teams channel is one module implementing both halves and a line in the daemon's
factory. A channel that is not configured is off: its route answers 403 saying how to turn it
on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Click:
    """One Approve or Deny, verified and read: what the gate counts as a vote."""

    via: str  # the channel's name: the audit trail's and the metrics' label
    approval: int  # the approval request it answers
    approve: bool
    identity: str  # the person, as the channel names them for good (an ID, not a display name)
    nonce: str  # one click, counted once: a replayed request carries the same nonce
    fleet: bool = False  # it answers a fleet incident's approval (fleet mode), not a local one


class Channel(Protocol):
    """The inbound half of an approval channel."""

    @property
    def name(self) -> str:
        """E.g. ``slack``: the votes' ``via``."""
        ...

    @property
    def path(self) -> str:
        """The route its requests arrive on, e.g. ``/slack/interactions``."""
        ...

    @property
    def off(self) -> str | None:
        """Why this channel is off (the 403's words), or None when it takes clicks."""
        ...

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> str | None:
        """None when the request is authentic, else why not (a short phrase, the 401's)."""
        ...

    def parse(self, body: bytes) -> Click:
        """The click in a verified request; ``errors.InputError`` naming what is wrong."""
        ...
