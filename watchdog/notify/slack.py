"""Slack: one message per incident, updated in place, with Approve/Deny buttons when asked.

Operators decide from this message, so it carries the decision itself -- verdict, score, the
reason, every signal with its value and threshold -- and the runbook's progress as it happens.
The Web API calls go through ``slack_sdk``'s client, which already knows Slack's rate limits
(429 with ``Retry-After``), server errors and dropped connections; failures are logged, never
raised, because a silent Slack must not stop a rollback.

Button clicks come back two ways, both reduced to one ``Interaction``: an HTTP POST to the
watchdog's listener (checked with ``verify_signature``, Slack's v0 scheme, over the raw body)
or Socket Mode (``SocketModeListener``: an outbound WebSocket, for hosts without a public URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

import aiohttp
import structlog

from watchdog import errors
from watchdog.notify import Card, MessageRefs, SignalLine
from watchdog.notify.channel import Click

if TYPE_CHECKING:  # slack_sdk is loaded only when Slack is configured: the daemon stays light
    from slack_sdk.errors import SlackApiError
    from slack_sdk.http_retry.async_handler import AsyncRetryHandler
    from slack_sdk.socket_mode.aiohttp import SocketModeClient
    from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
    from slack_sdk.socket_mode.request import SocketModeRequest
    from slack_sdk.web.async_slack_response import AsyncSlackResponse

log = structlog.get_logger("watchdog.slack")

APPROVE = "approve"
DENY = "deny"
DEFAULT_API_URL = "https://slack.com/api/"

# Block Kit limits (slack_sdk/models/blocks).
MAX_BLOCKS = 50
HEADER_TEXT = 150
SECTION_TEXT = 3000
CONTEXT_TEXT = 3000
BUTTON_TEXT = 75
CONFIRM_TITLE = 100
CONFIRM_TEXT = 300
CONFIRM_BUTTON = 30
SIGNAL_LINE = 600  # one signal never crowds out the others
SIGNAL_SECTIONS = 10  # with the other blocks, far below MAX_BLOCKS
FALLBACK_TEXT = 3000

MAX_SKEW = 300.0  # seconds a signed request may be old (or early): Slack's replay window

_STATE_ICONS = {
    "firing": ":red_circle:",
    "pending": ":large_yellow_circle:",
    "ok": ":large_green_circle:",
    "nodata": ":white_circle:",
    "error": ":warning:",
}
_VERDICT_TITLES = {
    "rollback": (":rotating_light:", "rollback"),
    "propose": (":raising_hand:", "rollback proposed"),
    "warn": (":warning:", "warning"),
    "inconclusive": (":grey_question:", "inconclusive"),
    "hold": (":white_check_mark:", "all clear"),
}
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
FLEET_PREFIX = "f"  # a button of a fleet incident's message: "f<fleet incident id>"
_APPROVAL_ID = re.compile(r"[1-9][0-9]{0,18}")  # positive; SQLite's range checked after
_SLACK_ID = re.compile(r"[A-Z0-9]{2,32}")  # U0123ABC, W0123ABC: what allowlists name
_ACTION_TS = re.compile(r"[0-9]{1,12}\.[0-9]{1,9}")
_SQLITE_MAX = 2**63 - 1


# --- The message -------------------------------------------------------------------------------


def blocks(card: Card) -> list[dict[str, Any]]:
    """The Block Kit message for ``card``, within Slack's limits however long the texts are."""
    icon, title = _VERDICT_TITLES.get(card.verdict, (":grey_question:", card.verdict))
    out: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(f"{icon} {card.target}: {title}", HEADER_TEXT)},
        _section(
            f"*Target* {_code(card.target)} · primary {_code(card.primary)}"
            f" → fallback {_code(card.fallback)}\n"
            f"*Verdict* {_escape(card.verdict)} · score {card.score:g}"
            f" · mode {_escape(card.mode)} · incident #{card.incident}\n"
            f"*Reason* {_escape(card.reason) or '—'}"
        ),
    ]
    if card.fleet is not None:
        members = ", ".join(_code(m) for m in card.fleet.members)
        out.append(
            _section(
                f"*Fleet incident* #{card.fleet.incident} · group {_code(card.fleet.group)}"
                f" · release {_code(card.fleet.release)}\n"
                f"*Affected* ({len(card.fleet.members)}): {members or '—'}"
            )
        )
    out.extend(_section(text) for text in _signal_sections(card.signals))
    out.append(_section(f"*Status* {_escape(card.status) or '—'}"))
    if card.history:
        out.append({"type": "context", "elements": [_mrkdwn(_history(card.history), CONTEXT_TEXT)]})
    if not card.final and card.fleet is not None and card.fleet.asking:
        out.append(_buttons(card, card.fleet.incident))
    elif not card.final and card.approval is not None:
        out.append(_buttons(card, card.approval))
    return out


def fallback_text(card: Card) -> str:
    """The message's plain text: what notifications and screen readers show."""
    text = (
        f"{card.target}: {card.verdict} (score {card.score:g}, incident #{card.incident})"
        f" — {card.status}"
    )
    return _fit(_escape(text), FALLBACK_TEXT)


def _buttons(card: Card, approval: int) -> dict[str, Any]:
    value = f"{FLEET_PREFIX}{approval}" if card.fleet is not None else str(approval)
    confirm = {
        "title": _plain(f"Roll back {card.target}?", CONFIRM_TITLE),
        "text": _mrkdwn(f"Stop {_code(card.primary)}, start {_code(card.fallback)}.", CONFIRM_TEXT),
        "confirm": _plain("Roll back", CONFIRM_BUTTON),
        "deny": _plain("Cancel", CONFIRM_BUTTON),
        "style": "danger",
    }
    return {
        "type": "actions",
        "block_id": f"approval:{value}",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE,
                "value": value,
                "style": "primary",
                "text": _plain("Approve rollback", BUTTON_TEXT),
                "confirm": confirm,
            },
            {
                "type": "button",
                "action_id": DENY,
                "value": value,
                "style": "danger",
                "text": _plain("Deny", BUTTON_TEXT),
            },
        ],
    }


def _signal_line(signal: SignalLine) -> str:
    icon = _STATE_ICONS.get(signal.state, ":grey_question:")
    value = "no value" if signal.value is None else f"{signal.value:.4g}"
    line = (
        f"{icon} *{_escape(signal.name)}* {_escape(signal.state)}"
        f" · {_escape(signal.severity)}/{_escape(signal.category)} · value {value}"
    )
    if signal.threshold:
        line += f" · threshold {_escape(signal.threshold)}"
    if signal.summary:
        line += f" — {_escape(signal.summary)}"
    return _fit(line, SIGNAL_LINE)


def _signal_sections(signals: Sequence[SignalLine]) -> list[str]:
    """Signal lines packed into as few sections as fit, at most ``SIGNAL_SECTIONS``; what does
    not fit is counted in a last line rather than dropped silently."""
    lines = [_signal_line(signal) for signal in signals]
    sections: list[list[str]] = []
    size = 0
    for index, line in enumerate(lines):
        if sections and size + 1 + len(line) <= SECTION_TEXT:
            sections[-1].append(line)
            size += 1 + len(line)
            continue
        if len(sections) == SIGNAL_SECTIONS:
            last = sections[-1]
            left = len(lines) - index
            while True:
                more = f"…and {left} more signals"
                if len("\n".join([*last, more])) <= SECTION_TEXT:
                    last.append(more)
                    break
                last.pop()
                left += 1
            break
        sections.append([line])
        size = len(line)
    return ["\n".join(section) for section in sections]


def _history(lines: Sequence[str]) -> str:
    """The timeline, newest lines kept when it is too long (the end is what matters)."""
    escaped = [_escape(line) for line in lines]
    budget = CONTEXT_TEXT - 32  # room for the "…N earlier" line
    kept: list[str] = []
    size = 0
    for line in reversed(escaped):
        if kept and size + 1 + len(line) > budget:
            break
        kept.append(line)
        size += 1 + len(line)
    kept.reverse()
    dropped = len(escaped) - len(kept)
    text = "\n".join([f"…{dropped} earlier", *kept] if dropped else kept)
    return text or "—"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text, SECTION_TEXT)}


def _mrkdwn(text: str, limit: int) -> dict[str, Any]:
    # ``text`` is already escaped: it may hold our own markup
    return {"type": "mrkdwn", "text": _fit(text, limit)}


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": _fit(text, limit) or "—", "emoji": True}


def _code(text: str) -> str:
    # a backtick inside would end the code span early
    return "`" + _escape(text.replace("`", "'")) + "`"


def _escape(text: str) -> str:
    """Slack's three control characters, so a value like "< 1" is not read as a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, never inside an entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", len(cut) - 4)  # "&amp;" is the longest entity: 5 characters
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


# --- Posting and updating ----------------------------------------------------------------------


_Failure = errors.CallFailed  # one Web API call that did not succeed: method, Slack's code


ATTACHMENT_LIMIT = 39_000  # chat.postMessage's text takes up to 40,000 characters


class SlackNotifier:
    """Posts an incident's first card, then updates that message with every later card."""

    def __init__(
        self,
        *,
        token: str,
        channel: str,
        refs: MessageRefs,
        api_url: str = DEFAULT_API_URL,
        timeout: float = 10.0,
        retries: int = 3,
    ) -> None:
        if not token.strip():
            raise errors.InputError("the Slack bot token is empty")
        if not channel:
            raise errors.InputError("no Slack channel to post to")
        if retries < 0 or timeout <= 0:
            raise errors.InputError("Slack timeout must be positive and retries not negative")
        from slack_sdk.web.async_client import AsyncWebClient

        self._channel = channel
        self._refs = refs
        self._client = AsyncWebClient(
            token=token,
            base_url=api_url,
            # aiohttp takes float seconds; slack_sdk's annotation says int
            timeout=cast(int, timeout),
            retry_handlers=_retry_handlers(retries),
        )
        self._locks: dict[int, asyncio.Lock] = {}  # one per incident: updates wait for the post
        self._posted: dict[int, tuple[str, str]] = {}  # so a failed journal write cannot repost
        self._closed = False

    async def publish(self, card: Card) -> None:
        """Show ``card`` in its incident's message; never raises (failures are logged)."""
        lock = self._locks.setdefault(card.incident, asyncio.Lock())
        async with lock:
            if self._closed:
                log.warning("slack notifier closed; card dropped", incident=card.incident)
                return
            try:
                await self._publish(card)
            except _Failure as failure:
                log.error(  # noqa: TRY400 - the code says it all; no traceback to add
                    "slack notification failed",
                    incident=card.incident,
                    method=failure.method,
                    error=failure.error,
                )
            except Exception as exc:  # the journal or a bug: still never into the rollback path
                log.exception(
                    "slack notification failed",
                    incident=card.incident,
                    error=f"{type(exc).__name__}: {exc}",
                )

    async def attach(
        self, incident: int, title: str, body: str, *, thread: tuple[str, str] | None = None
    ) -> None:
        """The document as a reply in the incident message's thread (a code block: Slack's
        formatting has no tables); never raises."""
        lock = self._locks.setdefault(incident, asyncio.Lock())
        async with lock:
            if self._closed:
                return
            text = f"*{_escape(title)}*\n```\n{_fit(body, ATTACHMENT_LIMIT)}\n```"
            try:
                ref = thread or self._posted.get(incident)
                if ref is None:
                    ref = await asyncio.to_thread(self._refs.message_ref, incident)
                channel, under = ref if ref is not None else (self._channel, None)
                await _call(
                    "chat.postMessage",
                    self._client.chat_postMessage(channel=channel, text=text, thread_ts=under),
                )
            except _Failure as failure:
                log.error(  # noqa: TRY400 - the code says it all
                    "slack attachment failed",
                    incident=incident,
                    method=failure.method,
                    error=failure.error,
                )
            except Exception as exc:
                log.exception(
                    "slack attachment failed", incident=incident, error=type(exc).__name__
                )
            else:
                log.info("slack attachment posted", incident=incident, title=title)

    async def aclose(self) -> None:
        """Drop later cards, after the ones in flight are done."""
        self._closed = True
        for lock in list(self._locks.values()):
            async with lock:
                pass

    async def _publish(self, card: Card) -> None:
        text, body = fallback_text(card), blocks(card)
        ref = self._posted.get(card.incident)
        if ref is None:
            ref = await asyncio.to_thread(self._refs.message_ref, card.incident)
        if ref is not None:
            channel, ts = ref
            try:
                await _call(
                    "chat.update",
                    self._client.chat_update(channel=channel, ts=ts, text=text, blocks=body),
                )
            except _Failure as failure:
                if failure.error != "message_not_found":
                    raise
                # someone deleted it: the incident still needs a message
                log.warning("slack message gone; posting anew", incident=card.incident)
            else:
                log.info("slack message updated", incident=card.incident, channel=channel, ts=ts)
                return
        response = await _call(
            "chat.postMessage",
            self._client.chat_postMessage(channel=self._channel, text=text, blocks=body),
        )
        posted = response.get("channel"), response.get("ts")
        if not isinstance(posted[0], str) or not isinstance(posted[1], str):
            raise _Failure("chat.postMessage", "answer without channel and ts")
        channel, ts = self._posted[card.incident] = posted[0], posted[1]
        log.info("slack message posted", incident=card.incident, channel=channel, ts=ts)
        await asyncio.to_thread(self._refs.remember_message, card.incident, channel, ts)


def _retry_handlers(retries: int) -> list[AsyncRetryHandler]:
    from slack_sdk.http_retry.builtin_async_handlers import (
        AsyncConnectionErrorRetryHandler,
        AsyncRateLimitErrorRetryHandler,
        AsyncServerErrorRetryHandler,
    )

    return [
        AsyncRateLimitErrorRetryHandler(max_retry_count=retries),  # waits Retry-After
        AsyncServerErrorRetryHandler(max_retry_count=retries),  # 500, 503
        AsyncConnectionErrorRetryHandler(max_retry_count=retries),
    ]


async def _call(method: str, call: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
    """The call's answer, or ``_Failure`` with Slack's error code (or what went wrong)."""
    from slack_sdk.errors import SlackApiError

    try:
        return await call
    except SlackApiError as exc:
        raise _Failure(method, _error_code(exc)) from None
    except TimeoutError:
        raise _Failure(method, "timeout") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _Failure(method, f"{type(exc).__name__}: {exc}") from None


def _error_code(exc: SlackApiError) -> str:
    response = exc.response
    data = getattr(response, "data", None)
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return cast(str, data["error"])
    return f"http {getattr(response, 'status_code', '?')}"


# --- Signed requests ---------------------------------------------------------------------------


def verify_signature(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float
) -> str | None:
    """None when ``body`` carries Slack's valid v0 signature, else why not (a short phrase).

    Over the raw body as received, before any parsing; header names in any case. A timestamp
    more than five minutes from ``now`` is stale, so a captured request cannot be replayed later.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    signature = lowered.get("x-slack-signature")
    timestamp = lowered.get("x-slack-request-timestamp")
    if signature is None:
        return "missing X-Slack-Signature"
    if timestamp is None:
        return "missing X-Slack-Request-Timestamp"
    if not _TIMESTAMP.fullmatch(timestamp):
        return "malformed timestamp"
    if abs(now - int(timestamp)) > MAX_SKEW:
        return "stale timestamp"
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    expected = b"v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest().encode()
    # bytes, so a non-ASCII header is a mismatch rather than a TypeError
    if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogateescape")):
        return "bad signature"
    return None


# --- Button clicks -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interaction:
    """One click on Approve or Deny, from HTTP or Socket Mode alike."""

    action: str  # APPROVE or DENY
    approval: int  # from the button value
    user_id: str
    username: str  # user.username or user.name, "" if absent
    action_ts: str  # replay key part
    channel: str  # container.channel_id / channel.id, "" if absent
    message_ts: str  # container.message_ts / message.ts, "" if absent
    fleet: bool = False  # the button answers a fleet incident (value "f<id>")

    @property
    def nonce(self) -> str:
        """One click, once: a replayed request carries the same user, action_ts and approval."""
        kind = FLEET_PREFIX if self.fleet else ""
        return f"slack:{self.user_id}:{self.action_ts}:{kind}{self.approval}"

    def click(self) -> Click:
        """The click as the gate counts it: by the user's ID (anyone may change a username)."""
        return Click(
            "slack",
            self.approval,
            self.action == APPROVE,
            self.user_id,
            self.nonce,
            fleet=self.fleet,
        )


@dataclass(frozen=True, slots=True)
class SlackChannel:
    """Slack's interactivity requests as an approval channel (``notify.channel.Channel``):
    signed with the app's signing secret; off without one."""

    secret: str = field(default="", repr=False)
    name: str = "slack"
    path: str = "/slack/interactions"

    @property
    def off(self) -> str | None:
        if self.secret:
            return None
        return "Slack interactions are off: configure slack.signing_secret_file or _env"

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> str | None:
        wrong = verify_signature(self.secret, headers, body, now=now)
        return None if wrong is None else f"Slack signature: {wrong}"

    def parse(self, body: bytes) -> Click:
        return parse_interaction(body).click()


def parse_interaction(body: bytes) -> Interaction:
    """The click in an HTTP interaction request: ``payload=<json>``, form-encoded."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise errors.InputError("not a form-encoded body") from None
    payloads = fields.get("payload")
    if not payloads:
        raise errors.InputError("no payload field")
    if len(payloads) > 1:
        raise errors.InputError("more than one payload field")
    try:
        payload = json.loads(payloads[0])
    except (ValueError, RecursionError):  # also too deep, or a giant integer
        raise errors.InputError("payload is not JSON") from None
    if not isinstance(payload, dict):
        raise errors.InputError("payload is not a JSON object")
    return interaction_of(payload)


def interaction_of(payload: Mapping[str, Any]) -> Interaction:
    """The click in a decoded ``block_actions`` payload (what Socket Mode delivers as is).
    Only the first action counts: a button click carries exactly one."""
    if payload.get("type") != "block_actions":  # nothing sent is echoed back
        raise errors.InputError("not a block_actions payload")
    actions = payload.get("actions")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        raise errors.InputError("no actions in the payload")
    action = actions[0]
    action_id = action.get("action_id")
    if action_id not in (APPROVE, DENY):
        raise errors.InputError("unknown action (approve or deny expected)")
    value = action.get("value")
    fleet = isinstance(value, str) and value.startswith(FLEET_PREFIX)
    if fleet and isinstance(value, str):
        value = value.removeprefix(FLEET_PREFIX)
    if not isinstance(value, str) or not _APPROVAL_ID.fullmatch(value) or int(value) > _SQLITE_MAX:
        raise errors.InputError("the action's value is not a positive integer")
    user = payload.get("user")
    if not isinstance(user, dict) or not _SLACK_ID.fullmatch(_text(user, "id")):
        raise errors.InputError("missing or malformed user.id")
    if not _ACTION_TS.fullmatch(_text(action, "action_ts")):
        raise errors.InputError("missing or malformed action_ts")
    container = payload.get("container")
    return Interaction(
        action=action_id,
        approval=int(value),
        fleet=fleet,
        user_id=user["id"],
        username=_text(user, "username") or _text(user, "name"),
        action_ts=_text(action, "action_ts"),
        channel=_text(container, "channel_id") or _text(payload.get("channel"), "id"),
        message_ts=_text(container, "message_ts") or _text(payload.get("message"), "ts"),
    )


def _text(parent: object, key: str) -> str:
    """``parent[key]`` when parent is an object and that is a string, else ""."""
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, str) else ""


# --- Socket Mode -------------------------------------------------------------------------------


class SocketModeListener:
    """Button clicks over Socket Mode (slack_sdk.socket_mode.aiohttp.SocketModeClient): no
    public URL needed. Every envelope is acknowledged first (Slack's 3-second rule), then a
    click is handed to ``on_interaction`` as its own task; a bad payload is logged and dropped.
    Slack being unreachable or refusing the token never raises: the listener keeps trying in
    the background, because rollbacks must not depend on Slack."""

    def __init__(
        self,
        *,
        app_token: str,
        bot_token: str,
        on_interaction: Callable[[Interaction], Awaitable[None]],
        api_url: str = DEFAULT_API_URL,
        connect_timeout: float = 10.0,
    ) -> None:
        if not app_token.strip():
            raise errors.InputError("the Slack app token is empty")
        self._app_token = app_token
        self._bot_token = bot_token
        self._on_interaction = on_interaction
        self._api_url = api_url
        self._connect_timeout = connect_timeout
        self._client: SocketModeClient | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        """Whether a Socket Mode session is open now."""
        session = self._client.current_session if self._client is not None else None
        return session is not None and not session.closed

    async def start(self) -> None:
        """Connect: returns once connected, or after the first failed attempt (logged; the
        listener keeps retrying), or after ``connect_timeout`` at most."""
        if self._client is not None:
            return
        from slack_sdk.socket_mode.aiohttp import SocketModeClient
        from slack_sdk.web.async_client import AsyncWebClient

        web = AsyncWebClient(
            token=self._bot_token,
            base_url=self._api_url,
            retry_handlers=_retry_handlers(2),
        )
        self._client = SocketModeClient(app_token=self._app_token, web_client=web)
        self._client.socket_mode_request_listeners.append(self._on_request)
        attempted = asyncio.Event()
        self._runner = asyncio.create_task(self._connect(self._client, attempted))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(attempted.wait(), self._connect_timeout)

    async def aclose(self) -> None:
        """Disconnect; clicks being handled get a moment to finish."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        client, self._client = self._client, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]
            # close() cancels the client's own tasks; let them finish being cancelled
            pending = [
                task
                for task in (
                    client.message_processor,
                    client.message_receiver,
                    client.current_session_monitor,
                )
                if task is not None
            ]
            await asyncio.gather(*pending, return_exceptions=True)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=5.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _connect(self, client: SocketModeClient, attempted: asyncio.Event) -> None:
        """Get a WebSocket URL (backing off while Slack refuses), then let the SDK connect;
        from then on the SDK's own monitor reconnects."""
        from slack_sdk.errors import SlackApiError

        delay = 1.0
        while True:
            try:
                client.wss_uri = await client.issue_new_wss_url()
            except SlackApiError as exc:
                log.error(  # noqa: TRY400 - Slack's error code is the whole story
                    "slack socket mode refused", error=_error_code(exc), retry_in=delay
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("slack unreachable", error=type(exc).__name__, retry_in=delay)
            else:
                await client.connect()  # type: ignore[no-untyped-call]
                log.info("slack socket mode connected")
                attempted.set()
                return
            attempted.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _on_request(
        self, client: AsyncBaseSocketModeClient, request: SocketModeRequest
    ) -> None:
        from slack_sdk.socket_mode.response import SocketModeResponse

        try:
            await client.send_socket_mode_response(
                SocketModeResponse(envelope_id=request.envelope_id)
            )
        except Exception as exc:  # the click is still handled; its nonce stops a redelivery
            log.warning("slack socket mode ack failed", error=type(exc).__name__)
        if request.type != "interactive":
            return  # events and slash commands: not ours
        try:
            interaction = interaction_of(request.payload)
        except errors.InputError as exc:
            log.warning("slack interaction dropped", reason=str(exc))
            return
        task = asyncio.create_task(self._deliver(interaction))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, interaction: Interaction) -> None:
        try:
            await self._on_interaction(interaction)
        except Exception as exc:  # one bad click must not stop the listener
            log.exception(
                "slack interaction handler failed",
                action=interaction.action,
                approval=interaction.approval,
                error=f"{type(exc).__name__}: {exc}",
            )
