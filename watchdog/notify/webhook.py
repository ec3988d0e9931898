"""A generic JSON webhook: every incident card, as JSON, POSTed to a URL of the operators' choice.

Slack is one chat tool; a team on another (or an incident tool, or a script) can take the same
card as plain JSON and render it however it likes. Every card is sent, so the receiver always
holds the latest whole state of an incident -- a lost card is healed by the next one. The body:

    {"version": 1, "event": "incident", "card": {...Card as JSON...}, "sent_at": "<RFC 3339>"}

Delivery is best effort with bounded, jittered retries: connection errors, timeouts, 5xx and 429
(which waits its ``Retry-After``) are retried, any other 4xx is final (the receiver said no, and
asking again would not change its mind). Failures are logged, never raised, because a silent
webhook must not stop a rollback. Cards of one incident go out one at a time, in order, so a
receiver never sees an older state after a newer one.

``Sender`` and ``Serial`` are shared with the Grafana annotator: one retry policy for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

import watchdog
from watchdog import errors, timefmt
from watchdog.notify import Card

log = structlog.get_logger("watchdog.webhook")

PAYLOAD_VERSION = 1
USER_AGENT = f"rollback-watchdog/{watchdog.__version__}"
BACKOFF = 0.5  # seconds: the first retry waits up to this, each later one up to twice as long
BACKOFF_MAX = 30.0
MAX_RETRY_AFTER = 60.0  # a longer Retry-After gives up: the incident's next card carries it all
DETAIL = 200  # characters of a refusal's body kept for the log

_HTTP_URL = re.compile(r"^https?://[^/\s@]+(/|$)")


DeliveryFailed = errors.DeliveryFailed


class _Failure(errors.DeliveryError):
    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class _Retryable(_Failure):
    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason, status)
        self.retry_after = retry_after


class _Final(_Failure):
    pass


def host_of(url: str) -> str:
    """What logs may say about a URL: host and port only (paths of webhooks often hold secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


class Sender:
    """JSON over HTTP with the notifiers' retry policy, on one connection pool."""

    def __init__(
        self,
        *,
        token: str | None,
        timeout: float,
        retries: int,
        transport: httpx.AsyncBaseTransport | None,
        what: str,
    ) -> None:
        if not timeout > 0 or retries < 0:
            raise errors.InputError(f"{what}: timeout must be positive and retries not negative")
        # a token that is not a valid header value would make httpx raise with the value in
        # the message -- and that message would be logged
        if token is not None and not re.fullmatch(r"[\x21-\x7e]+", token):
            raise errors.InputError(f"the {what} token is empty or holds spaces or control bytes")
        self._token = token
        self._timeout = timeout
        self._retries = retries
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(
            headers=headers, timeout=timeout, transport=transport, follow_redirects=False
        )
        self._jitter = wait_random_exponential(multiplier=BACKOFF, max=BACKOFF_MAX)
        self._closing = asyncio.Event()

    async def send(self, method: str, url: str, body: bytes | None) -> httpx.Response:
        """The 2xx answer to one request, retried as the policy says; ``DeliveryFailed`` else."""
        attempts = 0
        retrying = AsyncRetrying(
            stop=self._stop,
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    return await self._once(method, url, body)
        except _Failure as failure:
            raise DeliveryFailed(
                self.scrub(failure.reason, url), status=failure.status, attempts=attempts
            ) from None
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover

    def stop_retrying(self) -> None:
        """From now on no request waits for another attempt (shutdown)."""
        self._closing.set()

    async def aclose(self) -> None:
        """Close the connection pool."""
        self._closing.set()
        await self._client.aclose()

    async def _once(self, method: str, url: str, body: bytes | None) -> httpx.Response:
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            # httpx's timeout is per read; this bounds the whole attempt (a slow-drip answer)
            async with asyncio.timeout(self._timeout):
                response = await self._client.request(method, url, content=body, headers=headers)
        except TimeoutError:
            raise _Retryable(f"no answer within {self._timeout:g}s") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        status = response.status_code
        if 200 <= status < 300:
            return response
        reason = f"HTTP {status}"
        detail = _detail(response)
        if detail:
            reason += f": {detail}"
        if status == 429:
            after = retry_after(response.headers.get("Retry-After"), now=time.time())
            if after is not None and after > MAX_RETRY_AFTER:
                raise _Final(f"{reason} (Retry-After {after:g}s is too long to wait)", status)
            raise _Retryable(reason, status, after)
        if status >= 500:
            raise _Retryable(reason, status)
        raise _Final(reason, status)  # 3xx and 4xx: the receiver's answer will not change

    def _stop(self, state: RetryCallState) -> bool:
        return state.attempt_number > self._retries or self._closing.is_set()

    def _wait(self, state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failure, _Retryable) and failure.retry_after is not None:
            return failure.retry_after
        return float(self._jitter(state))

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)
        if self._closing.is_set():
            raise _Final("shutting down; not retried")

    def scrub(self, text: str, url: str) -> str:
        """``text`` without the token or the URL's path, whatever a library put in it."""
        if self._token:
            text = text.replace(self._token, "<redacted>")
        path = urlsplit(url).path
        if len(path) > 1:
            text = text.replace(path, "/<path>")
        return text


def retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _detail(response: httpx.Response) -> str:
    """A refusal's reason for the log: Grafana-style ``message`` or the start of the text."""
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        return ""
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        text = document["message"]
    text = " ".join(text.split())
    return text if len(text) <= DETAIL else text[: DETAIL - 1] + "…"


@dataclasses.dataclass(slots=True)
class _Entry:
    lock: asyncio.Lock
    users: int = 0


class Serial:
    """One lock per incident, so its cards go out one at a time and in the order published.

    A lock lives only while someone holds or waits for it, so memory does not grow with the
    number of incidents ever seen. ``asyncio.Lock`` wakes waiters first come, first served, and
    ``hold`` takes it without yielding first: cards published in order are sent in order.
    """

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, key: int) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the block."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(asyncio.Lock())
            self._empty.clear()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]
                if not self._entries:
                    self._empty.set()

    async def drained(self, within: float) -> bool:
        """Wait until nothing is held or waited for, at most ``within`` seconds."""
        try:
            await asyncio.wait_for(self._empty.wait(), within)
        except TimeoutError:
            return False
        return True


def payload(card: Card, at: float) -> bytes:
    """The JSON body for ``card``, sent at ``at`` (Unix seconds)."""
    document = {
        "version": PAYLOAD_VERSION,
        "event": "incident",
        "card": _plain(dataclasses.asdict(card)),
        "sent_at": timefmt.format_instant(at),
    }
    return json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _plain(value: Any) -> Any:
    """JSON has no NaN or infinity (Prometheus values can be either): those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class WebhookNotifier:
    """POSTs every card to one URL, as JSON; failures are logged, never raised."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        timeout: float,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _HTTP_URL.match(url):
            raise errors.InputError("the webhook URL is not an http:// or https:// URL")
        self._url = url
        self._host = host_of(url)
        self._timeout = timeout
        self._clock = clock
        self._sender = Sender(
            token=token, timeout=timeout, retries=retries, transport=transport, what="webhook"
        )
        self._serial = Serial()
        self._closed = False

    async def publish(self, card: Card) -> None:
        """Send ``card``; never raises (failures are logged)."""
        async with self._serial.hold(card.incident):
            if self._closed:
                log.warning("webhook closed; card dropped", host=self._host, incident=card.incident)
                return
            try:
                response = await self._sender.send("POST", self._url, payload(card, self._clock()))
            except DeliveryFailed as failure:
                log.error(  # noqa: TRY400 - the reason says it all; no traceback to add
                    "webhook delivery failed",
                    host=self._host,
                    incident=card.incident,
                    status=failure.status,
                    attempts=failure.attempts,
                    error=failure.reason,
                )
            except Exception as exc:  # a bug: still never into the rollback path
                log.error(  # noqa: TRY400 - a traceback could quote the request's headers
                    "webhook delivery failed",
                    host=self._host,
                    incident=card.incident,
                    error=self._sender.scrub(f"{type(exc).__name__}: {exc}", self._url),
                )
            else:
                log.debug(
                    "webhook delivered",
                    host=self._host,
                    incident=card.incident,
                    status=response.status_code,
                )

    async def attach(
        self, incident: int, title: str, body: str, *, thread: tuple[str, str] | None = None
    ) -> None:
        """POST the document: ``{"version": 1, "event": "document", "incident", "title",
        "body", "sent_at"}``; never raises."""
        async with self._serial.hold(incident):
            if self._closed:
                return
            document = {
                "version": 1,
                "event": "document",
                "incident": incident,
                "title": title,
                "body": body,
                "sent_at": timefmt.format_instant(self._clock()),
            }
            try:
                body_bytes = json.dumps(document, ensure_ascii=False).encode("utf-8")
                await self._sender.send("POST", self._url, body_bytes)
            except DeliveryFailed as failure:
                log.error(  # noqa: TRY400 - the reason says it all
                    "webhook delivery failed",
                    host=self._host,
                    incident=incident,
                    status=failure.status,
                    error=failure.reason,
                )
            except Exception as exc:
                log.error(  # noqa: TRY400 - a traceback could quote the request's headers
                    "webhook delivery failed",
                    host=self._host,
                    incident=incident,
                    error=self._sender.scrub(f"{type(exc).__name__}: {exc}", self._url),
                )

    async def aclose(self) -> None:
        """Drop later cards, give the ones in flight one last attempt, then close."""
        self._closed = True
        self._sender.stop_retrying()
        await self._serial.drained(self._timeout + 1.0)
        await self._sender.aclose()
