"""What a notification says, and the one interface every notifier implements.

An incident is told as one message that is posted once and then updated in place (Flagger's
notifier pattern): a ``Card`` is the whole message at one moment, so a notifier never has to
merge partial news, and the pipeline can publish after every step without caring which channel
listens. ``Silent`` is the notifier when none is configured, so callers never test for None.
Notifying is best effort: a notifier logs its failures and never raises into the rollback path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

log = structlog.get_logger("watchdog.notify")


@dataclass(frozen=True, slots=True)
class SignalLine:
    """One signal as the message shows it."""

    name: str
    state: str  # ok / pending / firing / nodata / error
    severity: str  # critical / warning
    category: str
    value: float | None  # None: no sample (nodata, error)
    threshold: str  # the rule's threshold in words, e.g. "> 500 ms"
    summary: str


@dataclass(frozen=True, slots=True)
class FleetLine:
    """A fleet incident on its one message: which group and release, and who is affected."""

    incident: int  # the fleet incident's id (its buttons answer it, never card.approval)
    group: str
    release: str
    members: tuple[str, ...]  # node/target, in order of joining
    asking: bool = False  # its approval is open: the message carries the fleet's buttons


@dataclass(frozen=True, slots=True)
class Card:
    """One incident's message: posted once, then updated in place as things happen."""

    incident: int  # journal incident id: the key of the message
    target: str
    primary: str  # unit names, e.g. lavalink-rust.service
    fallback: str
    verdict: str  # rollback / propose / warn / ...
    score: float
    reason: str  # the decision's human text
    mode: str  # auto / approve / observe
    signals: tuple[SignalLine, ...]
    status: str  # one line, e.g. "Awaiting approval (0 of 2)"
    approval: int | None = None  # when set, the message carries Approve/Deny for this approval
    history: tuple[str, ...] = ()  # timeline lines, oldest first
    final: bool = False  # the end: no more buttons ever
    fleet: FleetLine | None = None  # fleet mode: the message speaks for every affected node


class MessageRefs(Protocol):
    """Where an incident's message is (the journal implements it; sync methods)."""

    def message_ref(self, incident: int) -> tuple[str, str] | None:
        """(channel, ts) of the incident's message, None before it was posted."""
        ...

    def remember_message(self, incident: int, channel: str, ts: str) -> None:
        """Record where the incident's message was posted."""
        ...


class Notifier(Protocol):
    """Publishes incident cards; failures are logged, never raised."""

    async def publish(self, card: Card) -> None:
        """Post or update the incident's message to show ``card``."""
        ...

    async def attach(
        self, incident: int, title: str, body: str, *, thread: tuple[str, str] | None = None
    ) -> None:
        """Add a document (the rollback report, Markdown) to the incident's message, or under
        ``thread`` (a chat's channel and message id: a fleet incident's one message)."""
        ...

    async def aclose(self) -> None:
        """Release connections; later publishes are dropped."""
        ...


class Silent:
    """The notifier when no notification channel is configured: it drops every card."""

    async def publish(self, card: Card) -> None:
        """Nothing to tell."""

    async def attach(
        self, incident: int, title: str, body: str, *, thread: tuple[str, str] | None = None
    ) -> None:
        """Nowhere to put it."""

    async def aclose(self) -> None:
        """Nothing to release."""


class Fanout:
    """Every card to several notifiers at once (Slack, webhooks, Grafana...).

    They run concurrently, so a slow or hanging channel delays none of the others, and each is
    guarded, so one that raises despite the contract cannot stop the rest. Each notifier keeps
    its own per-incident order: cards start in the order they are published.
    """

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self._notifiers = tuple(notifiers)

    async def publish(self, card: Card) -> None:
        """Give ``card`` to every notifier; returns when all are done with it."""
        await asyncio.gather(*(self._publish(notifier, card) for notifier in self._notifiers))

    async def attach(
        self, incident: int, title: str, body: str, *, thread: tuple[str, str] | None = None
    ) -> None:
        """Give the document to every notifier."""
        await asyncio.gather(
            *(self._attach(notifier, incident, title, body, thread) for notifier in self._notifiers)
        )

    async def aclose(self) -> None:
        """Close every notifier, all at once."""
        await asyncio.gather(*(self._aclose(notifier) for notifier in self._notifiers))

    async def _attach(
        self,
        notifier: Notifier,
        incident: int,
        title: str,
        body: str,
        thread: tuple[str, str] | None,
    ) -> None:
        try:
            await notifier.attach(incident, title, body, thread=thread)
        except Exception as exc:
            log.error(  # noqa: TRY400 - the type only, as in _publish
                "notifier failed", notifier=type(notifier).__name__, error=type(exc).__name__
            )

    async def _publish(self, notifier: Notifier, card: Card) -> None:
        try:
            await notifier.publish(card)
        except Exception as exc:
            # the type only: a message or traceback could quote a secret the notifier holds
            log.error(  # noqa: TRY400
                "notifier failed",
                notifier=type(notifier).__name__,
                incident=card.incident,
                error=type(exc).__name__,
            )

    async def _aclose(self, notifier: Notifier) -> None:
        try:
            await notifier.aclose()
        except Exception as exc:
            log.error(  # noqa: TRY400
                "notifier failed to close",
                notifier=type(notifier).__name__,
                error=type(exc).__name__,
            )
