"""The JSON webhook and the fan-out, against a real receiver on a loopback socket.

The receiver is a small aiohttp server that records every request (headers, raw body, arrival
time) and answers as each test tells it: statuses, ``Retry-After``, delays. Timings that matter
(Retry-After, a hanging notifier not delaying the others) are measured at the receiver.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import io
import json
import math
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

import watchdog
from watchdog import errors, logs
from watchdog.notify import Card, Fanout, Notifier, SignalLine
from watchdog.notify.webhook import Serial, WebhookNotifier, retry_after

TOKEN = "whk_0123456789_super_secret_token"
SECRET_PATH = "/hooks/T0SECRET/B0SECRET/xyzzyPathSecret"
NOW = 1_800_000_000.25


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx routes loopback through a proxy named in the environment too
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@dataclasses.dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    body: str = "ok"


class Receiver:
    """A webhook receiver on 127.0.0.1 that records what it gets and answers as told."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: collections.deque[Answer] = collections.deque()
        self.delay_for: Callable[[Any], float] | None = None  # by decoded body
        self.in_flight = 0
        self.most_in_flight = 0
        self.incident_in_flight: collections.Counter[int] = collections.Counter()
        self.incident_overlaps = 0  # a request arriving while one of its incident was answered
        self.port = 0
        self._arrived = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SECRET_PATH}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(SECRET_PATH, self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        self._closing.set()  # answers still being delayed go out now
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, within: float = 5.0) -> None:
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.received) >= count), within
            )

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Received(dict(request.headers), body, time.monotonic()))
        async with self._arrived:
            self._arrived.notify_all()
        answer = self.answers.popleft() if self.answers else Answer()
        delay = answer.delay
        if self.delay_for is not None:
            delay = self.delay_for(json.loads(body))
        incident = json.loads(body)["card"]["incident"]
        if self.incident_in_flight[incident]:
            self.incident_overlaps += 1
        self.incident_in_flight[incident] += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            self.in_flight -= 1
            self.incident_in_flight[incident] -= 1
        return web.Response(status=answer.status, headers=answer.headers, text=answer.body)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


class Make:
    """Webhook notifiers for one test, closed when it ends."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.made: list[WebhookNotifier] = []

    def __call__(self, **options: Any) -> WebhookNotifier:
        settings: dict[str, Any] = {"token": TOKEN, "timeout": 2.0, "clock": lambda: NOW}
        settings.update(options)
        url = settings.pop("url", self.receiver.url)
        made = WebhookNotifier(url, **settings)
        self.made.append(made)
        return made


@pytest.fixture
async def webhook(receiver: Receiver) -> AsyncIterator[Make]:
    make = Make(receiver)
    yield make
    for made in make.made:
        await made.aclose()


def card(incident: int = 7, status: str = "Rolling back", **fields: Any) -> Card:
    values: dict[str, Any] = {
        "incident": incident,
        "target": "lavalink",
        "primary": "lavalink-rust.service",
        "fallback": "lavalink-java.service",
        "verdict": "rollback",
        "score": 2.5,
        "reason": "LavalinkDown firing",
        "mode": "approve",
        "signals": (
            SignalLine("LavalinkDown", "firing", "critical", "instability", 0.0, "< 1", "down"),
            SignalLine(
                "LavalinkLatencyBudgetFastBurn", "nodata", "critical", "performance", None, "", ""
            ),
        ),
        "status": status,
        "approval": 4,
        "history": ("10:00:00Z rollback started",),
    }
    values.update(fields)
    return Card(**values)


def failures(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "webhook delivery failed"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- What is sent ------------------------------------------------------------------------------


async def test_the_body_and_headers(receiver: Receiver, webhook: Make) -> None:
    await webhook().publish(card(final=True))
    (got,) = receiver.received
    assert got.json == {
        "version": 1,
        "event": "incident",
        "card": {
            "incident": 7,
            "target": "lavalink",
            "primary": "lavalink-rust.service",
            "fallback": "lavalink-java.service",
            "verdict": "rollback",
            "score": 2.5,
            "reason": "LavalinkDown firing",
            "mode": "approve",
            "signals": [
                {
                    "name": "LavalinkDown",
                    "state": "firing",
                    "severity": "critical",
                    "category": "instability",
                    "value": 0.0,
                    "threshold": "< 1",
                    "summary": "down",
                },
                {
                    "name": "LavalinkLatencyBudgetFastBurn",
                    "state": "nodata",
                    "severity": "critical",
                    "category": "performance",
                    "value": None,
                    "threshold": "",
                    "summary": "",
                },
            ],
            "status": "Rolling back",
            "approval": 4,
            "history": ["10:00:00Z rollback started"],
            "final": True,
            "fleet": None,  # fleet mode: the fleet incident's group, release and members
        },
        "sent_at": "2027-01-15T08:00:00.250Z",
    }
    assert got.headers["Authorization"] == f"Bearer {TOKEN}"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == f"rollback-watchdog/{watchdog.__version__}"


async def test_no_token_no_authorization_header(receiver: Receiver, webhook: Make) -> None:
    await webhook(token=None).publish(card())
    (got,) = receiver.received
    assert "Authorization" not in got.headers


async def test_values_json_cannot_hold_are_sent_as_null(receiver: Receiver, webhook: Make) -> None:
    odd = (
        SignalLine("A", "firing", "critical", "performance", math.nan, "", ""),
        SignalLine("B", "firing", "critical", "performance", math.inf, "", ""),
    )
    await webhook().publish(card(signals=odd, score=-math.inf, reason="ünïcode ✓"))
    (got,) = receiver.received
    assert b"NaN" not in got.body and b"Infinity" not in got.body  # strict JSON
    document = got.json
    assert [s["value"] for s in document["card"]["signals"]] == [None, None]
    assert document["card"]["score"] is None
    assert document["card"]["reason"] == "ünïcode ✓"


async def test_cards_of_an_incident_arrive_in_order_others_in_parallel(
    receiver: Receiver, webhook: Make
) -> None:
    rng = random.Random(7)  # noqa: S311 - delays for a test, not secrets
    # the receiver answers each request after a random pause: without the per-incident lock a
    # card would be sent before the previous one was answered, and could overtake it
    receiver.delay_for = lambda body: rng.uniform(0.0, 0.03)
    notifier = webhook()
    tasks = [
        asyncio.create_task(notifier.publish(card(incident=incident, status=f"step {n}")))
        for n in range(15)
        for incident in (1, 2, 3)
    ]  # as the gate spawns them: one task per card, in order
    await asyncio.gather(*tasks)
    seen: dict[int, list[str]] = collections.defaultdict(list)
    for got in receiver.received:
        seen[got.json["card"]["incident"]].append(got.json["card"]["status"])
    assert seen == {i: [f"step {n}" for n in range(15)] for i in (1, 2, 3)}
    assert receiver.incident_overlaps == 0  # the next card only once the last was answered
    assert receiver.most_in_flight >= 2  # incidents did not wait for each other


# --- Retries -----------------------------------------------------------------------------------


async def test_server_errors_are_retried_until_accepted(receiver: Receiver, webhook: Make) -> None:
    receiver.answers.extend([Answer(500), Answer(503)])
    with capture_logs() as logs:
        await webhook(retries=3).publish(card())
    assert len(receiver.received) == 3
    assert receiver.received[0].body == receiver.received[2].body  # the same card, resent
    assert failures(logs) == []


async def test_a_client_error_is_never_retried(receiver: Receiver, webhook: Make) -> None:
    receiver.answers.append(Answer(400, body='{"message": "schema mismatch"}'))
    with capture_logs() as logs:
        await webhook(retries=3).publish(card())
    assert len(receiver.received) == 1
    (failed,) = failures(logs)
    assert (failed["status"], failed["attempts"]) == (400, 1)
    assert failed["error"] == "HTTP 400: schema mismatch"


async def test_429_waits_retry_after(receiver: Receiver, webhook: Make) -> None:
    receiver.answers.append(Answer(429, headers={"Retry-After": "1"}))
    await webhook().publish(card())
    limited, accepted = receiver.received
    waited = accepted.at - limited.at
    assert 1.0 <= waited < 1.4, waited  # Retry-After itself, not the shorter jittered backoff


async def test_a_retry_after_too_long_is_not_waited(receiver: Receiver, webhook: Make) -> None:
    receiver.answers.append(Answer(429, headers={"Retry-After": "3600"}))
    with capture_logs() as logs:
        started = time.monotonic()
        await webhook().publish(card())
    assert time.monotonic() - started < 1.0
    assert len(receiver.received) == 1
    (failed,) = failures(logs)
    assert failed["status"] == 429 and "too long" in failed["error"]


async def test_retries_run_out(receiver: Receiver, webhook: Make) -> None:
    receiver.answers.extend([Answer(502)] * 5)
    with capture_logs() as logs:
        await webhook(retries=2).publish(card())
    assert len(receiver.received) == 3
    (failed,) = failures(logs)
    assert (failed["status"], failed["attempts"]) == (502, 3)


async def test_a_receiver_that_is_down_or_stalls(receiver: Receiver, webhook: Make) -> None:
    down = webhook(url=f"http://127.0.0.1:{closed_port()}/hook", retries=1)
    receiver.answers.extend([Answer(delay=10.0), Answer(delay=10.0)])
    stalled = webhook(timeout=0.3, retries=1)
    with capture_logs() as logs:
        started = time.monotonic()
        await asyncio.gather(down.publish(card(incident=1)), stalled.publish(card(incident=2)))
        took = time.monotonic() - started
    assert took < 3.0, took
    refused, slow = sorted(failures(logs), key=lambda entry: entry["incident"])
    assert refused["error"].startswith("ConnectError") and refused["attempts"] == 2
    assert refused["status"] is None
    assert slow["error"] == "no answer within 0.3s" and slow["attempts"] == 2


async def test_secrets_never_reach_the_log(receiver: Receiver, webhook: Make) -> None:
    # a receiver that echoes the request back in its refusal, then one that is down
    receiver.answers.append(Answer(401, body=f"bad token Bearer {TOKEN} for {SECRET_PATH}"))
    receiver.answers.extend([Answer(500)] * 2)
    stream = io.StringIO()
    logs.configure(stream=stream, level="debug")
    try:
        await webhook().publish(card(incident=1))
        await webhook(retries=1).publish(card(incident=2))
        await webhook(url=f"http://127.0.0.1:{closed_port()}{SECRET_PATH}", retries=0).publish(
            card(incident=3)
        )
    finally:
        logs.reset()
    logged = stream.getvalue()
    lines = [json.loads(line) for line in logged.splitlines()]
    assert [line["incident"] for line in lines if line["event"] == "webhook delivery failed"] == [
        1,
        2,
        3,
    ]
    assert lines[0]["error"] == "HTTP 401: bad token Bearer <redacted> for /<path>"
    assert f"127.0.0.1:{receiver.port}" in logged  # the host is named ...
    assert TOKEN not in logged and "xyzzyPathSecret" not in logged  # ... secrets are not


async def test_closing_interrupts_backoff_and_drops_later_cards(
    receiver: Receiver, webhook: Make
) -> None:
    receiver.answers.extend([Answer(429, headers={"Retry-After": "30"})])
    notifier = webhook()
    with capture_logs() as logs:
        pending = asyncio.create_task(notifier.publish(card(incident=1)))
        await receiver.wait_for(1)
        started = time.monotonic()
        await notifier.aclose()
        await pending
        assert time.monotonic() - started < 1.0
        await notifier.publish(card(incident=2))
    assert len(receiver.received) == 1
    events = [(e["event"], e["incident"]) for e in logs]
    assert events == [("webhook delivery failed", 1), ("webhook closed; card dropped", 2)]


# --- Pieces ------------------------------------------------------------------------------------


def test_retry_after_forms() -> None:
    assert retry_after("2", now=0) == 2.0
    assert retry_after(" 0 ", now=0) == 0.0
    assert retry_after("-5", now=0) == 0.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after("soon", now=0) is None
    assert retry_after("nan", now=0) is None
    assert retry_after(None, now=0) is None


async def test_serial_keeps_no_lock_nobody_uses() -> None:
    serial = Serial()
    order: list[str] = []

    async def hold(name: str, key: int) -> None:
        async with serial.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(0.01)
            order.append(f"{name}-")

    await asyncio.gather(hold("a", 1), hold("b", 1), hold("c", 2))
    assert order.index("a-") < order.index("b+")  # one key: one at a time, in order
    assert order.index("c+") < order.index("a-")  # another key: meanwhile
    assert len(serial) == 0
    assert await serial.drained(0.1)


def test_bad_settings_are_input_errors() -> None:
    with pytest.raises(errors.InputError):
        WebhookNotifier("ftp://example.com/hook", token=None, timeout=1)
    with pytest.raises(errors.InputError):
        WebhookNotifier("https://user:pw@example.com/hook", token=None, timeout=1)
    with pytest.raises(errors.InputError):
        WebhookNotifier("https://example.com/hook", token="line\nbreak", timeout=1)
    with pytest.raises(errors.InputError):
        WebhookNotifier("https://example.com/hook", token="", timeout=1)
    with pytest.raises(errors.InputError):
        WebhookNotifier("https://example.com/hook", token=None, timeout=1, retries=-1)


# --- Fan-out -----------------------------------------------------------------------------------


class Hanging:
    """A notifier that takes 5 s over every card."""

    def __init__(self) -> None:
        self.closed = False

    async def publish(self, card: Card) -> None:
        await asyncio.sleep(5.0)

    async def aclose(self) -> None:
        self.closed = True


class Broken:
    """A notifier that breaks the contract: it raises."""

    def __init__(self) -> None:
        self.calls = 0

    async def publish(self, card: Card) -> None:
        self.calls += 1
        raise RuntimeError("boom")

    async def aclose(self) -> None:
        raise RuntimeError("boom on close")


async def test_a_hanging_notifier_does_not_delay_the_others(
    receiver: Receiver, webhook: Make
) -> None:
    hanging = Hanging()
    fanout = Fanout([hanging, webhook()])
    started = time.monotonic()
    publishing = asyncio.create_task(fanout.publish(card()))
    await receiver.wait_for(1, within=2.0)
    assert receiver.received[0].at - started < 0.5
    assert not publishing.done()  # still waiting for the hanging one
    publishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publishing


async def test_a_raising_notifier_does_not_stop_the_others(
    receiver: Receiver, webhook: Make
) -> None:
    broken, hanging = Broken(), Hanging()
    notifiers: list[Notifier] = [broken, webhook(), webhook(token=None)]
    fanout = Fanout(notifiers)
    with capture_logs() as logs:
        await fanout.publish(card())
        await Fanout([broken, hanging]).aclose()
    assert len(receiver.received) == 2 and broken.calls == 1
    assert hanging.closed
    assert [(e["event"], e["notifier"], e["error"]) for e in logs if "notifier" in e] == [
        ("notifier failed", "Broken", "RuntimeError"),
        ("notifier failed to close", "Broken", "RuntimeError"),
    ]


async def test_fanout_keeps_each_notifiers_order(receiver: Receiver, webhook: Make) -> None:
    rng = random.Random(3)  # noqa: S311 - as above
    receiver.delay_for = lambda body: rng.uniform(0.0, 0.02)
    fanout = Fanout([webhook(), Broken()])
    with capture_logs():
        tasks = [asyncio.create_task(fanout.publish(card(status=f"s{n}"))) for n in range(12)]
        await asyncio.gather(*tasks)
    assert [r.json["card"]["status"] for r in receiver.received] == [f"s{n}" for n in range(12)]
    assert receiver.incident_overlaps == 0
