"""A fake Slack on loopback: the Web API methods the watchdog calls, and Socket Mode.

Slack cannot be reached from tests, so this speaks enough of its real protocol for slack_sdk's
own clients to talk to it unchanged: bearer tokens and Slack's error codes (``not_authed``,
``invalid_auth``, ``channel_not_found``, ``message_not_found``...), HTTP 429 with
``Retry-After``, ``apps.connections.open`` and the Socket Mode WebSocket (``hello``, envelopes,
acknowledgements). Block Kit is checked with slack_sdk's models plus the text limits they miss,
so a message Slack would refuse is refused here too. Every call and acknowledgement is recorded
for assertions, and the next calls can be told to fail or stall.

    async with FakeSlack(token="xoxb-test") as slack:
        notifier = SlackNotifier(token="xoxb-test", channel="C0123", refs=refs,
                                 api_url=slack.api_url)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import itertools
import json
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

from aiohttp import WSMsgType, web
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

MAX_BLOCKS = 50
MAX_TEXT = 3000  # any text object; slack_sdk's models check only some of them
MAX_MESSAGE_TEXT = 40_000  # chat.postMessage `text`
BOT_USER = "U0FAKEBOT"
BOT_ID = "B0FAKEBOT"
TEAM = "T0FAKETEAM"


@dataclass(frozen=True, slots=True)
class Call:
    """One Web API request as the fake saw it."""

    method: str  # e.g. "chat.postMessage"
    args: dict[str, Any]  # query, form and JSON fields merged; blocks decoded
    at: float  # time.monotonic() on arrival
    status: int  # the HTTP status answered
    error: str | None  # Slack's error code, None when ok


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int  # 0: answer normally (after the delay)
    retry_after: int | None
    delay: float


class FakeSlack:
    """Slack's Web API and Socket Mode on 127.0.0.1, for one ``async with`` block."""

    def __init__(
        self,
        *,
        token: str = "xoxb-test",  # noqa: S107 - a fake Slack's fake tokens
        app_token: str = "xapp-test",  # noqa: S107
        channels: Iterable[str] | None = None,  # None: any channel ID exists
        app_id: str = "A0FAKEAPP",
    ) -> None:
        self.token = token
        self.app_token = app_token
        self.channels = None if channels is None else frozenset(channels)
        self.app_id = app_id
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}  # (channel, ts) -> message
        self.acks: list[dict[str, Any]] = []  # every frame with an envelope_id the app sent
        self.connections = 0  # WebSocket sessions opened so far
        self._faults: collections.deque[_Fault] = collections.deque()
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = itertools.count(1)
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # --- Lifecycle ---

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()  # stalled answers end now
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        """The Web API base URL, as ``SlackSettings.api_url`` holds it (ends with "/")."""
        return f"http://127.0.0.1:{self._port}/api/"

    # --- Steering and inspecting ---

    def calls_to(self, method: str) -> list[Call]:
        """The recorded calls of one method, in order."""
        return [call for call in self.calls if call.method == method]

    def fail_next(
        self, count: int = 1, *, status: int = 500, retry_after: int | None = None
    ) -> None:
        """Answer the next ``count`` Web API calls with HTTP ``status`` (any method)."""
        self._faults.extend(_Fault(status, retry_after, 0.0) for _ in range(count))

    def rate_limit_next(self, count: int = 1, *, retry_after: int = 1) -> None:
        """Answer the next ``count`` calls as Slack rate-limits: 429 with ``Retry-After``."""
        self.fail_next(count, status=429, retry_after=retry_after)

    def stall_next(self, count: int = 1, *, seconds: float) -> None:
        """Hold the next ``count`` calls for ``seconds`` before answering them normally."""
        self._faults.extend(_Fault(0, None, seconds) for _ in range(count))

    async def wait_connected(self, count: int = 1, *, within: float = 5.0) -> None:
        """Until ``count`` sessions were opened in all and one is open now."""
        await self._wait(lambda: self.connections >= count and bool(self._sockets), within)

    async def wait_ack(self, envelope_id: str, *, within: float = 5.0) -> dict[str, Any]:
        """The app's acknowledgement of one envelope."""
        await self._wait(lambda: any(a["envelope_id"] == envelope_id for a in self.acks), within)
        return next(ack for ack in self.acks if ack["envelope_id"] == envelope_id)

    async def push(self, envelope: Mapping[str, Any]) -> None:
        """Send one frame to the newest open Socket Mode session."""
        if not self._sockets:
            raise RuntimeError("no Socket Mode session is open")
        await self._sockets[-1].send_str(json.dumps(envelope))

    async def push_interactive(
        self, payload: Mapping[str, Any], *, accepts_response_payload: bool = False
    ) -> str:
        """Deliver an interaction as Slack does over Socket Mode; returns its envelope_id."""
        envelope_id = str(uuid.uuid4())
        await self.push(
            {
                "envelope_id": envelope_id,
                "payload": dict(payload),
                "type": "interactive",
                "accepts_response_payload": accepts_response_payload,
            }
        )
        return envelope_id

    async def push_disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask the app to reconnect, as Slack does before it recycles a connection."""
        await self.push(
            {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}}
        )

    async def _wait(self, predicate: Callable[[], bool], within: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), within)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- The Web API ---

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        at = time.monotonic()
        fault = self._faults.popleft() if self._faults else None
        args, token, problem = await _arguments(request)
        if fault is not None and fault.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.delay)
        if fault is not None and fault.status:
            error = "ratelimited" if fault.status == 429 else "fatal_error"
            headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            return self._answer(
                method, args, at, {"ok": False, "error": error}, fault.status, headers
            )
        if problem is not None:
            return self._answer(method, args, at, {"ok": False, "error": problem})
        handler = self._methods().get(method)
        if handler is None:
            return self._answer(method, args, at, {"ok": False, "error": "unknown_method"})
        auth = self._auth(token, app_level=method == "apps.connections.open")
        body = {"ok": False, "error": auth} if auth is not None else handler(args)
        return self._answer(method, args, at, body)

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "apps.connections.open": self._connections_open,
        }

    def _answer(
        self,
        method: str,
        args: dict[str, Any],
        at: float,
        body: dict[str, Any],
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        error = None if body.get("ok") else str(body.get("error"))
        self.calls.append(Call(method=method, args=args, at=at, status=status, error=error))
        return web.json_response(body, status=status, headers=headers)

    def _auth(self, token: str | None, *, app_level: bool) -> str | None:
        """Slack's error code for this token on this kind of method, None when accepted."""
        if not token:
            return "not_authed"
        right, other = (self.app_token, self.token) if app_level else (self.token, self.app_token)
        if hmac.compare_digest(token.encode(), right.encode()):
            return None
        if hmac.compare_digest(token.encode(), other.encode()):
            return "not_allowed_token_type"
        return "invalid_auth"

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not isinstance(channel, str) or not self._channel_exists(channel):
            return {"ok": False, "error": "channel_not_found"}
        problem = _message_problem(args)
        if problem is not None:
            return problem
        ts = f"{int(time.time())}.{next(self._seq):06d}"
        message = {
            "type": "message",
            "user": BOT_USER,
            "bot_id": BOT_ID,
            "team": TEAM,
            "ts": ts,
            "text": args.get("text", ""),
        }
        if "blocks" in args:
            message["blocks"] = args["blocks"]
        self.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": dict(message)}

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        if not isinstance(channel, str) or not self._channel_exists(channel):
            return {"ok": False, "error": "channel_not_found"}
        message = self.messages.get((channel, ts)) if isinstance(ts, str) else None
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        problem = _message_problem(args)
        if problem is not None:
            return problem
        message["text"] = args.get("text", "")
        if "blocks" in args:
            message["blocks"] = args["blocks"]
        message["edited"] = {"user": BOT_USER, "ts": f"{time.time():.6f}"}
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": message["text"],
            "message": dict(message),
        }

    def _connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        ticket = secrets.token_hex(16)
        self._tickets.add(ticket)
        url = f"ws://127.0.0.1:{self._port}/socket?ticket={ticket}&app_id={self.app_id}"
        return {"ok": True, "url": url}

    def _channel_exists(self, channel: str) -> bool:
        return bool(channel) and (self.channels is None or channel in self.channels)

    # --- Socket Mode ---

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)  # a URL opens one session, as Slack's do
        ws = web.WebSocketResponse()  # autoping: answers the SDK's "sdk-ping-pong" pings
        await ws.prepare(request)
        self._sockets.append(ws)
        self.connections += 1
        try:
            await ws.send_json(
                {
                    "type": "hello",
                    "num_connections": len(self._sockets),
                    "debug_info": {
                        "host": "fake-slack",
                        "build_number": 1,
                        "approximate_connection_time": 18060,
                    },
                    "connection_info": {"app_id": self.app_id},
                }
            )
            await self._notify()
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(frame.data)
                except ValueError:
                    continue
                if isinstance(data, dict) and isinstance(data.get("envelope_id"), str):
                    self.acks.append(data)
                    await self._notify()
        finally:
            self._sockets.remove(ws)
            await self._notify()
        return ws


async def _arguments(request: web.Request) -> tuple[dict[str, Any], str | None, str | None]:
    """(the call's arguments, its token, a Slack error code if the body is unreadable), from
    the query string and a JSON or form body, as slack_sdk sends either."""
    args: dict[str, Any] = dict(request.query)
    token: str | None = None
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        token = authorization.removeprefix("Bearer ").strip()
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            return args, token, "invalid_json"
        if not isinstance(body, dict):
            return args, token, "invalid_json"
        args.update(body)
    elif request.can_read_body:
        form = await request.post()
        args.update({key: value for key, value in form.items() if isinstance(value, str)})
        for key in ("blocks", "attachments"):  # a form carries these as JSON strings
            if isinstance(args.get(key), str):
                try:
                    args[key] = json.loads(args[key])
                except ValueError:
                    return args, token, "invalid_blocks_format"
    form_token = args.pop("token", None)  # the legacy way: a field, not a header
    if token is None and isinstance(form_token, str):
        token = form_token
    return args, token, None


def _message_problem(args: Mapping[str, Any]) -> dict[str, Any] | None:
    """Slack's answer refusing this message's text or blocks, None when it would be accepted."""
    text, blocks = args.get("text"), args.get("blocks")
    if not text and not blocks:
        return {"ok": False, "error": "no_text"}
    if isinstance(text, str) and len(text) > MAX_MESSAGE_TEXT:
        return {"ok": False, "error": "msg_too_long"}
    if blocks is not None:
        problem = blocks_problem(blocks)
        if problem is not None:
            return {
                "ok": False,
                "error": "invalid_blocks",
                "response_metadata": {"messages": [f"[ERROR] {problem}"]},
            }
    return None


def blocks_problem(blocks: object) -> str | None:
    """Why Slack would refuse these blocks, None if it would take them: slack_sdk's model
    checks (they validate recursively on ``to_dict``) plus the limits they leave out."""
    if not isinstance(blocks, list):
        return "blocks must be a list"
    if len(blocks) > MAX_BLOCKS:
        return f"{len(blocks)} blocks, more than {MAX_BLOCKS}"
    block_ids: set[str] = set()
    for index, raw in enumerate(blocks):
        if not isinstance(raw, dict):
            return f"block {index} is not an object"
        block = Block.parse(raw)
        if block is None:
            return f"block {index}: unknown type {raw.get('type')!r}"
        try:
            block.to_dict()
        except SlackObjectFormationError as exc:
            return f"block {index}: {exc}"
        problem = _texts_problem(raw)
        if problem is not None:
            return f"block {index}: {problem}"
        block_id = raw.get("block_id")
        if isinstance(block_id, str):
            if block_id in block_ids:
                return f"block {index}: duplicate block_id {block_id!r}"
            block_ids.add(block_id)
    return None


def _texts_problem(node: object) -> str | None:
    """Every text object holds 1 to 3000 characters."""
    if isinstance(node, list):
        return next((p for p in map(_texts_problem, node) if p is not None), None)
    if not isinstance(node, dict):
        return None
    if node.get("type") in ("mrkdwn", "plain_text"):
        text = node.get("text")
        if not isinstance(text, str) or not text:
            return "empty text"
        if len(text) > MAX_TEXT:
            return f"text of {len(text)} characters, more than {MAX_TEXT}"
    return next((p for p in map(_texts_problem, node.values()) if p is not None), None)


# --- Requests as Slack sends them --------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers Slack puts on a request to the app: its v0 signature over the raw body."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}"}


def interaction_body(payload: Mapping[str, Any]) -> bytes:
    """An interaction request's body: ``payload=<JSON>``, form-encoded."""
    return urlencode({"payload": json.dumps(payload)}).encode()


def block_actions(
    *,
    action: str = "approve",
    value: str = "7",
    user_id: str = "U2CERLKJA",
    username: str = "roadrunner",
    channel: str = "C0123ABCD",
    message_ts: str = "1600857119.015400",
    action_ts: str = "1600857125.412963",
) -> dict[str, Any]:
    """A ``block_actions`` payload shaped like a real captured one (a button in a message)."""
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": username, "name": username, "team_id": TEAM},
        "api_app_id": "A0FAKEAPP",
        "token": "Shh_legacy_verification_token",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": "1388105719492.1379717998065.9bc163894734c1f415a2c504e81dec91",
        "team": {"id": TEAM, "domain": "fake-team"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "rollbacks"},
        "message": {
            "bot_id": BOT_ID,
            "type": "message",
            "text": "lavalink: rollback",
            "user": BOT_USER,
            "ts": message_ts,
            "team": TEAM,
            "blocks": [],
        },
        "state": {"values": {}},
        "response_url": "https://hooks.slack.com/actions/T0FAKETEAM/1388105719492/fake",
        "actions": [
            {
                "action_id": action,
                "block_id": f"approval:{value}",
                "text": {"type": "plain_text", "text": "Approve rollback", "emoji": True},
                "value": value,
                "style": "primary",
                "type": "button",
                "action_ts": action_ts,
            }
        ],
    }
