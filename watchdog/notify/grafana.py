"""Grafana: one annotation per rollback, a region from the start of the run to its end.

The dashboards are where people look when they ask "what happened at 14:02?"; a rollback drawn
across the graphs answers it without a second tool. Only a rollback is drawn: warnings,
approvals waiting and denials are not events on the service's timeline.

From the cards of an incident:
- the first whose status starts with "Rolling back" or "Rollback" (the run started) creates the
  annotation (``POST /api/annotations``): tagged with the configured tags plus
  ``target:<name>`` and ``incident:<id>``, text "<target>: rollback <primary> -> <fallback>:
  <reason>";
- the final card closes it (``PATCH /api/annotations/{id}``: ``timeEnd`` and the final status
  appended to the text);
- a final card with no start seen (the watchdog restarted during the run) makes a point
  annotation with the final text; a start that never reached Grafana is sent whole, as a region,
  with the final card, and the cards in between try to create it again.
Requests use the webhook's retry policy (5xx, 429, timeouts; never another 4xx); failures are
logged, never raised. An incident is forgotten once its annotation is closed.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from watchdog import errors
from watchdog.notify import Card
from watchdog.notify.webhook import DeliveryFailed, Sender, Serial, host_of

log = structlog.get_logger("watchdog.grafana")

TEXT_LIMIT = 8000  # characters of annotation text: a reason can be long, a tooltip cannot
MAX_OPEN = 256  # rollbacks in flight remembered at once (a run ends within minutes)
MAX_DONE = 1024  # closed incidents remembered, so a repeated final card draws nothing twice
_STARTS = ("Rolling back", "Rollback")


def about_rollback(status: str) -> bool:
    """Whether a card's status is about a rollback run (started, in progress or ended)."""
    return status.startswith(_STARTS)


@dataclass(slots=True)
class _Region:
    start: int  # ms
    text: str
    id: int | None = None  # Grafana's, once created


class GrafanaAnnotator:
    """Turns rollback cards into Grafana annotations; failures are logged, never raised."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        dashboard_uid: str | None,
        tags: Sequence[str],
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise errors.InputError("the Grafana URL is not an http:// or https:// URL")
        self._api = url.rstrip("/") + "/api/annotations"
        self._host = host_of(url)
        self._dashboard_uid = dashboard_uid
        self._tags = list(tags)
        self._timeout = timeout
        self._clock = clock
        self._sender = Sender(
            token=token, timeout=timeout, retries=retries, transport=transport, what="Grafana"
        )
        self._serial = Serial()
        self._open: collections.OrderedDict[int, _Region] = collections.OrderedDict()
        self._done: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._closed = False

    @property
    def remembered(self) -> int:
        """How many incidents are held in memory (open regions and closed ids)."""
        return len(self._open) + len(self._done)

    async def publish(self, card: Card) -> None:
        """Create, or close, the incident's annotation if ``card`` says so; never raises."""
        async with self._serial.hold(card.incident):
            if self._closed:
                log.warning("grafana closed; card dropped", host=self._host, incident=card.incident)
                return
            try:
                await self._publish(card)
            except DeliveryFailed as failure:
                log.error(  # noqa: TRY400 - the reason says it all; no traceback to add
                    "grafana annotation failed",
                    host=self._host,
                    incident=card.incident,
                    status=failure.status,
                    attempts=failure.attempts,
                    error=failure.reason,
                )
            except Exception as exc:  # a bug: still never into the rollback path
                log.error(  # noqa: TRY400 - a traceback could quote the request's headers
                    "grafana annotation failed",
                    host=self._host,
                    incident=card.incident,
                    error=self._sender.scrub(f"{type(exc).__name__}: {exc}", self._api),
                )

    async def attach(
        self, incident: int, title: str, body: str, *, thread: tuple[str, str] | None = None
    ) -> None:
        """Annotations carry no documents: the region's text already says how it ended."""

    async def aclose(self) -> None:
        """Drop later cards, give the ones in flight one last attempt, then close."""
        self._closed = True
        self._sender.stop_retrying()
        await self._serial.drained(self._timeout + 1.0)
        await self._sender.aclose()

    async def _publish(self, card: Card) -> None:
        if card.incident in self._done:
            return  # closed already: a later copy of the final card
        now = int(self._clock() * 1000)
        region = self._open.get(card.incident)
        if region is None:
            if not about_rollback(card.status):
                return  # warn, awaiting approval, denied...: not an event on the timeline
            region = _Region(start=now, text=_fit(_text(card)))
            if card.final:  # the start happened before this process (a restart)
                try:
                    await self._create(card, region.start, None, _ended(region.text, card.status))
                finally:
                    self._finish(card.incident)
                return
            self._remember(card.incident, region)
        if not card.final:
            if region.id is None:  # not created yet (or the last try failed): try now
                region.id = await self._create(card, region.start, None, region.text)
                log.info("grafana annotation created", host=self._host, incident=card.incident)
            return
        text = _ended(region.text, card.status)
        try:
            if region.id is None:  # the start never reached Grafana: the whole region at once
                await self._create(card, region.start, now, text)
            else:
                await self._sender.send(
                    "PATCH", f"{self._api}/{region.id}", _json({"timeEnd": now, "text": text})
                )
        finally:
            self._finish(card.incident)  # a failed close is logged; retrying forever is not
        log.info("grafana annotation closed", host=self._host, incident=card.incident)

    async def _create(self, card: Card, start: int, end: int | None, text: str) -> int:
        """POST one annotation; Grafana's id for it."""
        body: dict[str, Any] = {
            "time": start,
            "tags": [*self._tags, f"target:{card.target}", f"incident:{card.incident}"],
            "text": text,
        }
        if end is not None:
            body["timeEnd"] = end
        if self._dashboard_uid is not None:
            body["dashboardUID"] = self._dashboard_uid
        response = await self._sender.send("POST", self._api, _json(body))
        try:
            answer = response.json()
        except ValueError:
            answer = None
        annotation = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(annotation, int) or isinstance(annotation, bool) or annotation <= 0:
            raise DeliveryFailed("Grafana's answer holds no annotation id", status=200, attempts=1)
        return annotation

    def _remember(self, incident: int, region: _Region) -> None:
        self._open[incident] = region
        while len(self._open) > MAX_OPEN:
            forgotten, _ = self._open.popitem(last=False)
            log.warning("grafana forgot an unfinished rollback", incident=forgotten)

    def _finish(self, incident: int) -> None:
        self._open.pop(incident, None)
        self._done[incident] = None
        while len(self._done) > MAX_DONE:
            self._done.popitem(last=False)


def _text(card: Card) -> str:
    return f"{card.target}: rollback {card.primary} -> {card.fallback}: {card.reason}"


def _fit(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ended(text: str, status: str) -> str:
    """The start's text with the final status under it; the status is never the part cut."""
    status = _fit(status, TEXT_LIMIT // 4)
    return _fit(text, TEXT_LIMIT - len(status) - 1) + "\n" + status


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")
