"""The fake Slack against slack_sdk's own clients, and the watchdog's Slack code against the fake.

The fake is only worth something if Slack's SDK cannot tell it from Slack for what we use, so
its Web API is first driven by ``AsyncWebClient`` directly (answers, error codes, form and JSON
bodies), then the notifier runs on it with the faults that matter in production -- 429 with
Retry-After, 5xx, stalls, a refused token, a deleted message, concurrent cards -- and the
Socket Mode listener connects through the SDK's aiohttp client to the fake's WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from structlog.testing import capture_logs

from watchdog.notify import Card, SignalLine
from watchdog.notify.slack import (
    APPROVE,
    DENY,
    Interaction,
    SlackNotifier,
    SocketModeListener,
    blocks,
)
from watchdog_lab.slack import FakeSlack, block_actions

BOT = "xoxb-1111-2222-bottoken"
APP = "xapp-1-A0FAKEAPP-3333-apptoken"
CHANNEL = "C0ROLLBACK"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # slack_sdk routes every call through a proxy named in the environment, loopback included
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=BOT, app_token=APP, channels={CHANNEL, "C0OTHER"}) as fake:
        yield fake


class Refs:
    """MessageRefs in memory, as the journal keeps them."""

    def __init__(self) -> None:
        self.refs: dict[int, tuple[str, str]] = {}
        self.remembered: list[tuple[int, str, str]] = []

    def message_ref(self, incident: int) -> tuple[str, str] | None:
        return self.refs.get(incident)

    def remember_message(self, incident: int, channel: str, ts: str) -> None:
        self.remembered.append((incident, channel, ts))
        self.refs[incident] = (channel, ts)


class BrokenRefs(Refs):
    def message_ref(self, incident: int) -> tuple[str, str] | None:
        raise OSError("disk I/O error")


def card(incident: int = 1, status: str = "Awaiting approval (0 of 1)", **fields: Any) -> Card:
    values: dict[str, Any] = {
        "incident": incident,
        "target": "lavalink",
        "primary": "lavalink-rust.service",
        "fallback": "lavalink-java.service",
        "verdict": "rollback",
        "score": 3.0,
        "reason": "LavalinkDown firing",
        "mode": "approve",
        "signals": (
            SignalLine("LavalinkDown", "firing", "critical", "instability", 0.0, "< 1", "down"),
        ),
        "status": status,
        "approval": 4,
    }
    values.update(fields)
    return Card(**values)


def notifier(slack: FakeSlack, refs: Refs, **options: Any) -> SlackNotifier:
    return SlackNotifier(token=BOT, channel=CHANNEL, refs=refs, api_url=slack.api_url, **options)


def web(slack: FakeSlack, token: str | None = BOT) -> AsyncWebClient:
    return AsyncWebClient(token=token, base_url=slack.api_url)


def failures(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "slack notification failed"]


# --- The fake, as slack_sdk sees it ------------------------------------------------------------


async def test_post_then_update_round_trip(slack: FakeSlack) -> None:
    client = web(slack)
    first = blocks(card())
    posted = await client.chat_postMessage(channel=CHANNEL, text="first", blocks=first)
    assert posted["ok"] is True
    assert posted["channel"] == CHANNEL
    ts = posted["ts"]
    assert posted["message"]["blocks"] == first
    updated = await client.chat_update(channel=CHANNEL, ts=ts, text="second", blocks=[])
    assert (updated["channel"], updated["ts"], updated["text"]) == (CHANNEL, ts, "second")
    assert slack.messages[(CHANNEL, ts)]["text"] == "second"
    assert [(c.method, c.status, c.error) for c in slack.calls] == [
        ("chat.postMessage", 200, None),
        ("chat.update", 200, None),
    ]
    assert slack.calls[0].args["blocks"] == first  # the JSON body, decoded
    second = await client.chat_postMessage(channel=CHANNEL, text="another")
    assert float(second["ts"]) > float(ts)  # ts values order a channel's messages


async def test_form_encoded_bodies_are_read_too(slack: FakeSlack) -> None:
    blocks_json = json.dumps([{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}])
    answer = await web(slack).api_call(
        "chat.postMessage", data={"channel": CHANNEL, "text": "hi", "blocks": blocks_json}
    )
    assert answer["ok"] is True
    assert slack.calls[0].args["blocks"][0]["text"]["text"] == "hi"
    legacy = await web(slack, token=None).api_call(
        "chat.postMessage", data={"channel": CHANNEL, "text": "hi", "token": BOT}
    )
    assert legacy["ok"] is True  # the token as a form field, the old way


@pytest.mark.parametrize(
    ("token", "method", "error"),
    [
        (None, "chat.postMessage", "not_authed"),
        ("xoxb-wrong", "chat.postMessage", "invalid_auth"),
        (APP, "chat.postMessage", "not_allowed_token_type"),
        (BOT, "apps.connections.open", "not_allowed_token_type"),
        ("xapp-wrong", "apps.connections.open", "invalid_auth"),
        (BOT, "chat.delete", "unknown_method"),
    ],
)
async def test_tokens_are_checked_as_slack_does(
    slack: FakeSlack, token: str | None, method: str, error: str
) -> None:
    with pytest.raises(SlackApiError) as raised:
        await web(slack, token).api_call(method, json={"channel": CHANNEL, "text": "x"})
    assert raised.value.response["error"] == error
    assert slack.messages == {}


async def test_channel_message_and_block_errors(slack: FakeSlack) -> None:
    client = web(slack)

    async def error_of(method: str, **args: Any) -> str:
        with pytest.raises(SlackApiError) as raised:
            await client.api_call(method, json=args)
        return str(raised.value.response["error"])

    assert await error_of("chat.postMessage", text="x") == "channel_not_found"
    assert await error_of("chat.postMessage", channel="C0NOWHERE", text="x") == "channel_not_found"
    assert await error_of("chat.postMessage", channel=CHANNEL) == "no_text"
    assert await error_of("chat.update", channel=CHANNEL, ts="1.000001", text="x") == (
        "message_not_found"
    )
    posted = await client.chat_postMessage(channel=CHANNEL, text="x")
    other = await error_of("chat.update", channel="C0OTHER", ts=posted["ts"], text="y")
    assert other == "message_not_found"  # a ts is only a message in its own channel
    too_many = [{"type": "divider"}] * 51
    assert await error_of("chat.postMessage", channel=CHANNEL, blocks=too_many) == "invalid_blocks"
    long_button = blocks(card())
    long_button[-1]["elements"][1]["text"]["text"] = "x" * 76
    assert await error_of("chat.postMessage", channel=CHANNEL, text="x", blocks=long_button) == (
        "invalid_blocks"
    )
    long_section = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]
    assert await error_of("chat.postMessage", channel=CHANNEL, text="x", blocks=long_section) == (
        "invalid_blocks"
    )


async def test_connections_open_gives_a_one_time_socket_url(slack: FakeSlack) -> None:
    answer = await web(slack).apps_connections_open(app_token=APP)
    url = answer["url"]
    assert url.startswith(slack.api_url.replace("http://", "ws://").replace("/api/", "/socket?"))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello"
            assert hello["connection_info"]["app_id"] == "A0FAKEAPP"
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(url)  # used once already


# --- The notifier ------------------------------------------------------------------------------


async def test_first_card_posts_and_later_cards_update(slack: FakeSlack) -> None:
    refs = Refs()
    slack_notifier = notifier(slack, refs)
    await slack_notifier.publish(card(status="Awaiting approval (0 of 1)"))
    ((incident, channel, ts),) = refs.remembered
    assert (incident, channel) == (1, CHANNEL)
    await slack_notifier.publish(card(status="Rolling back: step 3/7 stop-primary", approval=None))
    await slack_notifier.publish(card(status="Rolled back", final=True, history=("done",)))
    assert [call.method for call in slack.calls] == [
        "chat.postMessage",
        "chat.update",
        "chat.update",
    ]
    assert all(call.error is None for call in slack.calls)
    message = slack.messages[(CHANNEL, ts)]
    assert message["blocks"] == blocks(card(status="Rolled back", final=True, history=("done",)))
    assert "Rolled back" in message["text"]
    assert not any(block["type"] == "actions" for block in message["blocks"])
    assert len(refs.remembered) == 1


async def test_the_report_goes_into_the_incident_messages_thread(slack: FakeSlack) -> None:
    refs = Refs()
    slack_notifier = notifier(slack, refs)
    await slack_notifier.publish(card(status="Rolled back", final=True))
    ((_, _, ts),) = refs.remembered
    report = "# Rollback report\n\n| a | b |\n|---|---|\n" + "x" * 50_000
    await slack_notifier.attach(1, "Rollback report, run #1", report)
    reply = slack.calls_to("chat.postMessage")[-1]
    assert reply.error is None and reply.args["thread_ts"] == ts
    text = reply.args["text"]
    assert text.startswith("*Rollback report, run #1*\n```\n# Rollback report")
    assert len(text) <= 40_000  # Slack's limit for a message's text


async def test_a_message_posted_before_a_restart_is_updated_not_reposted(slack: FakeSlack) -> None:
    posted = await web(slack).chat_postMessage(channel=CHANNEL, text="from the last run")
    refs = Refs()
    refs.refs[1] = (CHANNEL, posted["ts"])
    await notifier(slack, refs).publish(card())
    assert [call.method for call in slack.calls] == ["chat.postMessage", "chat.update"]
    assert slack.calls[1].args["ts"] == posted["ts"]
    assert refs.remembered == []


async def test_a_deleted_message_is_posted_anew(slack: FakeSlack) -> None:
    refs = Refs()
    refs.refs[1] = (CHANNEL, "1500000000.000001")  # gone from Slack
    with capture_logs() as logs:
        await notifier(slack, refs).publish(card())
    assert [(call.method, call.error) for call in slack.calls] == [
        ("chat.update", "message_not_found"),
        ("chat.postMessage", None),
    ]
    ((_, _, ts),) = refs.remembered
    assert (CHANNEL, ts) in slack.messages
    assert any(entry["event"] == "slack message gone; posting anew" for entry in logs)


async def test_a_429_waits_retry_after_then_succeeds(slack: FakeSlack) -> None:
    slack.rate_limit_next(1, retry_after=1)
    refs = Refs()
    await notifier(slack, refs, retries=2).publish(card())
    limited, accepted = slack.calls
    assert (limited.status, limited.error) == (429, "ratelimited")
    assert (accepted.status, accepted.error) == (200, None)
    waited = accepted.at - limited.at
    # slack_sdk sleeps Retry-After plus up to one second of jitter
    assert 1.0 <= waited < 2.5, waited
    assert len(refs.remembered) == 1


async def test_server_errors_are_retried(slack: FakeSlack) -> None:
    slack.fail_next(2, status=500)
    refs = Refs()
    await notifier(slack, refs, retries=2).publish(card())
    assert [call.status for call in slack.calls] == [500, 500, 200]
    assert len(refs.remembered) == 1
    assert len(slack.messages) == 1


async def test_failures_are_logged_never_raised_and_tokens_never_logged(slack: FakeSlack) -> None:
    refs = Refs()
    with capture_logs() as logs:
        slack.fail_next(1, status=500)
        await notifier(slack, refs, retries=0).publish(card(incident=1))
        slack.rate_limit_next(2, retry_after=0)
        await notifier(slack, refs, retries=1).publish(card(incident=2))
        wrong_token = "xoxb-9999-secret-that-must-not-leak"
        await SlackNotifier(
            token=wrong_token, channel=CHANNEL, refs=refs, api_url=slack.api_url
        ).publish(card(incident=3))
        await SlackNotifier(
            token=BOT, channel="C0NOWHERE", refs=refs, api_url=slack.api_url
        ).publish(card(incident=4))
        await notifier(slack, BrokenRefs()).publish(card(incident=5))
    errors = [(entry["incident"], entry["error"]) for entry in failures(logs)]
    assert errors == [
        (1, "fatal_error"),
        (2, "ratelimited"),
        (3, "invalid_auth"),
        (4, "channel_not_found"),
        (5, "OSError: disk I/O error"),
    ]
    assert all(entry["method"] == "chat.postMessage" for entry in failures(logs)[:4])
    assert refs.remembered == []
    assert wrong_token not in repr(logs) and BOT not in repr(logs)


async def test_a_stalled_slack_times_out_and_unreachable_slack_is_logged(slack: FakeSlack) -> None:
    refs = Refs()
    slack.stall_next(1, seconds=10)
    with capture_logs() as logs:
        started = time.monotonic()
        await notifier(slack, refs, timeout=0.3, retries=0).publish(card())
        assert time.monotonic() - started < 3
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        await SlackNotifier(
            token=BOT,
            channel=CHANNEL,
            refs=refs,
            api_url=f"http://127.0.0.1:{port}/api/",
            retries=1,
        ).publish(card(incident=2))
    (stalled, refused) = failures(logs)
    assert stalled["error"] == "timeout"
    assert refused["incident"] == 2
    assert "Connect" in refused["error"]
    assert refs.remembered == []


async def test_concurrent_cards_of_a_new_incident_post_once_then_update_in_order(
    slack: FakeSlack,
) -> None:
    slack.stall_next(1, seconds=0.3)  # the first post is slow: the others must wait for it
    refs = Refs()
    slack_notifier = notifier(slack, refs)
    cards = [card(status=f"step {n}") for n in range(1, 6)]
    await asyncio.gather(*(slack_notifier.publish(each) for each in cards))
    assert [call.method for call in slack.calls] == ["chat.postMessage"] + ["chat.update"] * 4
    assert [call.args["text"].rsplit(" — ", 1)[1] for call in slack.calls] == [
        f"step {n}" for n in range(1, 6)
    ]
    ((_, channel, ts),) = refs.remembered
    assert slack.messages[(channel, ts)]["blocks"] == blocks(cards[-1])
    assert len(slack.messages) == 1


async def test_two_incidents_get_two_messages(slack: FakeSlack) -> None:
    refs = Refs()
    slack_notifier = notifier(slack, refs)
    await asyncio.gather(
        slack_notifier.publish(card(incident=1)),
        slack_notifier.publish(card(incident=2)),
        slack_notifier.publish(card(incident=1, status="later")),
        slack_notifier.publish(card(incident=2, status="later")),
    )
    assert sorted(incident for incident, _, _ in refs.remembered) == [1, 2]
    assert len(slack.messages) == 2
    assert [call.method for call in slack.calls].count("chat.update") == 2


async def test_after_aclose_cards_are_dropped(slack: FakeSlack) -> None:
    slack_notifier = notifier(slack, Refs())
    await slack_notifier.publish(card())
    await slack_notifier.aclose()
    await slack_notifier.publish(card(status="after close"))
    assert len(slack.calls) == 1


# --- Socket Mode -------------------------------------------------------------------------------


class Clicks:
    """on_interaction that queues what it gets (and can be told to fail once)."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.queue: asyncio.Queue[Interaction] = asyncio.Queue()
        self.fail_first = fail_first

    async def __call__(self, interaction: Interaction) -> None:
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("journal locked")
        await self.queue.put(interaction)

    async def next(self) -> Interaction:
        return await asyncio.wait_for(self.queue.get(), 5)


@pytest.fixture
async def listening(slack: FakeSlack) -> AsyncIterator[tuple[SocketModeListener, Clicks]]:
    clicks = Clicks()
    listener = SocketModeListener(
        app_token=APP, bot_token=BOT, on_interaction=clicks, api_url=slack.api_url
    )
    await listener.start()
    try:
        yield listener, clicks
    finally:
        await listener.aclose()


async def test_socket_mode_click_is_acked_and_delivered(
    slack: FakeSlack, listening: tuple[SocketModeListener, Clicks]
) -> None:
    listener, clicks = listening
    assert listener.connected
    await slack.wait_connected()
    assert [call.method for call in slack.calls] == ["apps.connections.open"]
    envelope_id = await slack.push_interactive(block_actions(action="approve", value="4"))
    assert await slack.wait_ack(envelope_id) == {"envelope_id": envelope_id}
    assert await clicks.next() == Interaction(
        action=APPROVE,
        approval=4,
        user_id="U2CERLKJA",
        username="roadrunner",
        action_ts="1600857125.412963",
        channel="C0123ABCD",
        message_ts="1600857119.015400",
    )


async def test_socket_mode_bad_payloads_are_acked_and_dropped(
    slack: FakeSlack, listening: tuple[SocketModeListener, Clicks]
) -> None:
    _, clicks = listening
    await slack.wait_connected()
    bad = block_actions(action="restart")
    with capture_logs() as logs:
        dropped = await slack.push_interactive(bad)
        await slack.wait_ack(dropped)
        event = "evt-1"
        await slack.push(
            {"envelope_id": event, "type": "events_api", "payload": {"event": {"type": "x"}}}
        )
        await slack.wait_ack(event)
        good = await slack.push_interactive(block_actions(action="deny", value="9"))
        await slack.wait_ack(good)
        interaction = await clicks.next()
    assert (interaction.action, interaction.approval) == (DENY, 9)  # the bad one never came
    assert clicks.queue.empty()
    assert [entry["reason"] for entry in logs if entry["event"] == "slack interaction dropped"] == [
        "unknown action (approve or deny expected)"
    ]


async def test_a_failing_handler_does_not_stop_the_listener(slack: FakeSlack) -> None:
    clicks = Clicks(fail_first=True)
    listener = SocketModeListener(
        app_token=APP, bot_token=BOT, on_interaction=clicks, api_url=slack.api_url
    )
    await listener.start()
    try:
        with capture_logs() as logs:
            await slack.push_interactive(block_actions(value="1"))
            await slack.push_interactive(block_actions(value="2"))
            assert (await clicks.next()).approval == 2
        assert any(entry["event"] == "slack interaction handler failed" for entry in logs)
    finally:
        await listener.aclose()


async def test_socket_mode_reconnects_when_slack_asks(
    slack: FakeSlack, listening: tuple[SocketModeListener, Clicks]
) -> None:
    _, clicks = listening
    await slack.wait_connected()
    await slack.push_disconnect()
    await slack.wait_connected(count=2)
    assert [call.method for call in slack.calls] == ["apps.connections.open"] * 2
    envelope_id = await slack.push_interactive(block_actions(value="12"))
    await slack.wait_ack(envelope_id)
    assert (await clicks.next()).approval == 12


async def test_a_refused_app_token_neither_raises_nor_hangs(slack: FakeSlack) -> None:
    listener = SocketModeListener(
        app_token="xapp-revoked",
        bot_token=BOT,
        on_interaction=Clicks(),
        api_url=slack.api_url,
        connect_timeout=5.0,
    )
    with capture_logs() as logs:
        started = time.monotonic()
        await listener.start()
        assert time.monotonic() - started < 2
    assert not listener.connected
    refused = [entry for entry in logs if entry["event"] == "slack socket mode refused"]
    assert refused[0]["error"] == "invalid_auth"
    assert "xapp-revoked" not in repr(logs)
    await listener.aclose()
    assert slack.connections == 0
