"""Slack without Slack: signatures checked against Slack's published example and slack_sdk's own
verifier, interaction payloads parsed (and refused) as they arrive, and the message's blocks
held to Block Kit's limits by slack_sdk's models whatever the incident throws at them."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from slack_sdk.signature import Clock, SignatureVerifier

from watchdog.errors import InputError
from watchdog.notify import Card, SignalLine, Silent
from watchdog.notify.slack import (
    APPROVE,
    DENY,
    Interaction,
    SlackChannel,
    blocks,
    fallback_text,
    interaction_of,
    parse_interaction,
    verify_signature,
)
from watchdog_lab.slack import block_actions, blocks_problem, interaction_body, sign

# Slack's published example (docs.slack.dev/authentication/verifying-requests-from-slack).
EXAMPLE_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
EXAMPLE_TIMESTAMP = 1531420618
EXAMPLE_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
EXAMPLE_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
EXAMPLE_HEADERS = {
    "X-Slack-Request-Timestamp": str(EXAMPLE_TIMESTAMP),
    "X-Slack-Signature": EXAMPLE_SIGNATURE,
}


class PinnedClock(Clock):
    """slack_sdk's clock, stopped at one instant."""

    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


def sdk_accepts(secret: str, headers: dict[str, str], body: bytes, now: float) -> bool:
    return SignatureVerifier(secret, clock=PinnedClock(now)).is_valid_request(body, headers)


# --- Signatures --------------------------------------------------------------------------------


def test_slacks_published_example_is_valid_for_us_and_for_slack_sdk() -> None:
    now = EXAMPLE_TIMESTAMP + 42.5
    assert verify_signature(EXAMPLE_SECRET, EXAMPLE_HEADERS, EXAMPLE_BODY, now=now) is None
    assert sdk_accepts(EXAMPLE_SECRET, EXAMPLE_HEADERS, EXAMPLE_BODY, now)
    verifier = SignatureVerifier(EXAMPLE_SECRET)
    generated = verifier.generate_signature(timestamp=str(EXAMPLE_TIMESTAMP), body=EXAMPLE_BODY)
    assert generated == EXAMPLE_SIGNATURE
    # the fake's signer, used by the HTTP tests, signs as Slack does
    assert sign(EXAMPLE_SECRET, EXAMPLE_BODY, EXAMPLE_TIMESTAMP) == EXAMPLE_HEADERS


@pytest.mark.parametrize(
    ("skew", "reason"),
    [
        (0.0, None),
        (300.0, None),  # the window's edge is still inside, for Slack's SDK too
        (-300.0, None),
        (300.001, "stale timestamp"),
        (-300.5, "stale timestamp"),
        (86_400.0, "stale timestamp"),  # a captured request replayed the next day
    ],
)
def test_the_five_minute_window_matches_slack_sdk(skew: float, reason: str | None) -> None:
    now = EXAMPLE_TIMESTAMP + skew
    assert verify_signature(EXAMPLE_SECRET, EXAMPLE_HEADERS, EXAMPLE_BODY, now=now) == reason
    assert sdk_accepts(EXAMPLE_SECRET, EXAMPLE_HEADERS, EXAMPLE_BODY, now) is (reason is None)


H, B, S = EXAMPLE_HEADERS, EXAMPLE_BODY, EXAMPLE_SECRET
TS = str(EXAMPLE_TIMESTAMP)


@pytest.mark.parametrize(
    ("headers", "body", "secret", "reason"),
    [
        (H, B + b"&x=1", S, "bad signature"),
        (H, B.replace(b"roadrunner", b"coyote"), S, "bad signature"),
        (H, B, S + "0", "bad signature"),
        ({**H, "X-Slack-Signature": "v1=" + EXAMPLE_SIGNATURE[3:]}, B, S, "bad signature"),
        ({**H, "X-Slack-Signature": EXAMPLE_SIGNATURE.upper()}, B, S, "bad signature"),
        ({**H, "X-Slack-Signature": ""}, B, S, "bad signature"),
        ({**H, "X-Slack-Request-Timestamp": str(EXAMPLE_TIMESTAMP + 1)}, B, S, "bad signature"),
        ({"X-Slack-Request-Timestamp": TS}, B, S, "missing X-Slack-Signature"),
        ({"X-Slack-Signature": EXAMPLE_SIGNATURE}, B, S, "missing X-Slack-Request-Timestamp"),
        ({}, B, S, "missing X-Slack-Signature"),
    ],
)
def test_tampered_or_incomplete_requests_are_refused_by_both(
    headers: dict[str, str], body: bytes, secret: str, reason: str
) -> None:
    now = EXAMPLE_TIMESTAMP + 1.0
    assert verify_signature(secret, headers, body, now=now) == reason
    assert not sdk_accepts(secret, headers, body, now)


@pytest.mark.parametrize(
    "timestamp", ["", "abc", "-1531420618", "1.5e9", "+1531420618", " 1531420618", "١٢٣", "9" * 40]
)
def test_malformed_timestamps_are_refused_without_an_exception(timestamp: str) -> None:
    headers = {**EXAMPLE_HEADERS, "X-Slack-Request-Timestamp": timestamp}
    reason = verify_signature(EXAMPLE_SECRET, headers, EXAMPLE_BODY, now=EXAMPLE_TIMESTAMP)
    assert reason == "malformed timestamp"


def test_a_non_ascii_signature_is_a_mismatch_not_a_crash() -> None:
    # slack_sdk compares str and raises TypeError here; a header must never crash the listener
    headers = {**EXAMPLE_HEADERS, "X-Slack-Signature": "v0=ä" + EXAMPLE_SIGNATURE[4:]}
    assert verify_signature(EXAMPLE_SECRET, headers, EXAMPLE_BODY, now=EXAMPLE_TIMESTAMP) == (
        "bad signature"
    )


def test_header_names_match_in_any_case_and_from_aiohttp_headers() -> None:
    lower = {name.lower(): value for name, value in EXAMPLE_HEADERS.items()}
    upper = {name.upper(): value for name, value in EXAMPLE_HEADERS.items()}
    multidict = CIMultiDict(EXAMPLE_HEADERS)  # what aiohttp's request.headers is
    for headers in (lower, upper, multidict):
        reason = verify_signature(EXAMPLE_SECRET, headers, EXAMPLE_BODY, now=EXAMPLE_TIMESTAMP)
        assert reason is None


def test_the_raw_bytes_are_signed_even_when_they_are_not_utf8() -> None:
    body = b"payload=\xff\xfe"
    headers = sign("s3cret", body, EXAMPLE_TIMESTAMP)
    assert verify_signature("s3cret", headers, body, now=EXAMPLE_TIMESTAMP) is None
    assert verify_signature("s3cret", headers, b"payload=\xff\xff", now=EXAMPLE_TIMESTAMP) == (
        "bad signature"
    )


TAMPERINGS = [
    "none",
    "body",
    "secret",
    "timestamp",
    "signature-digit",
    "signature-version",
    "drop-signature",
    "drop-timestamp",
    "header-case",
]


@settings(max_examples=400)
@given(
    secret=st.text(min_size=1, max_size=64).filter(lambda s: s.strip() != ""),
    body=st.text(max_size=300).map(str.encode),
    timestamp=st.integers(min_value=0, max_value=2**34),
    skew=st.floats(min_value=-700.0, max_value=700.0, allow_nan=False),
    tampering=st.sampled_from(TAMPERINGS),
    position=st.integers(min_value=0, max_value=63),
)
def test_agrees_with_slack_sdk_on_random_requests(
    secret: str, body: bytes, timestamp: int, skew: float, tampering: str, position: int
) -> None:
    headers = sign(secret, body, timestamp)
    signature = headers["X-Slack-Signature"]
    match tampering:
        case "body":
            body += b"&"
        case "secret":
            headers = sign(secret + "x", body, timestamp)
        case "timestamp":
            headers["X-Slack-Request-Timestamp"] = str(timestamp + 1)
        case "signature-digit":
            index = 3 + position
            flipped = "0" if signature[index] != "0" else "1"
            headers["X-Slack-Signature"] = signature[:index] + flipped + signature[index + 1 :]
        case "signature-version":
            headers["X-Slack-Signature"] = "v1=" + signature[3:]
        case "drop-signature":
            del headers["X-Slack-Signature"]
        case "drop-timestamp":
            del headers["X-Slack-Request-Timestamp"]
        case "header-case":
            headers = {name.swapcase(): value for name, value in headers.items()}
    now = timestamp + skew
    ours = verify_signature(secret, headers, body, now=now)
    assert (ours is None) is sdk_accepts(secret, headers, body, now)
    if tampering in ("none", "header-case"):
        assert ours == (None if abs(skew) <= 300 else "stale timestamp")


# --- Interactions ------------------------------------------------------------------------------


def test_a_real_block_actions_request_parses() -> None:
    payload = block_actions(action="approve", value="42", user_id="U01AZ88AQQ4")
    interaction = parse_interaction(interaction_body(payload))
    assert interaction == Interaction(
        action=APPROVE,
        approval=42,
        user_id="U01AZ88AQQ4",
        username="roadrunner",
        action_ts="1600857125.412963",
        channel="C0123ABCD",
        message_ts="1600857119.015400",
    )
    assert interaction.nonce == "slack:U01AZ88AQQ4:1600857125.412963:42"
    # Socket Mode hands over the same payload already decoded
    assert interaction_of(payload) == interaction


def test_deny_and_the_fallback_fields() -> None:
    payload = block_actions(action="deny", value="3")
    del payload["container"]  # older payloads: channel.id and message.ts only
    del payload["user"]["username"]
    payload["user"]["name"] = "wile"
    interaction = interaction_of(payload)
    assert (interaction.action, interaction.approval) == (DENY, 3)
    assert (interaction.username, interaction.channel, interaction.message_ts) == (
        "wile",
        "C0123ABCD",
        "1600857119.015400",
    )
    del payload["channel"], payload["message"], payload["user"]["name"]
    bare = interaction_of(payload)
    assert (bare.username, bare.channel, bare.message_ts) == ("", "", "")


def test_only_the_first_action_counts() -> None:
    payload = block_actions(action="deny", value="5")
    payload["actions"].append({**payload["actions"][0], "action_id": "explode", "value": "x"})
    assert interaction_of(payload).action == DENY


def test_replays_share_a_nonce_and_separate_clicks_do_not() -> None:
    body = interaction_body(block_actions(value="9"))
    assert parse_interaction(body).nonce == parse_interaction(body).nonce
    again = parse_interaction(interaction_body(block_actions(value="9", action_ts="1600857200.1")))
    assert again.nonce != parse_interaction(body).nonce


def form(payload: Any) -> bytes:
    return b"payload=" + quote(json.dumps(payload)).encode()


def changed(**fields: Any) -> bytes:
    payload = block_actions()
    payload.update(fields)
    return form(payload)


def with_action(**fields: Any) -> bytes:
    payload = block_actions()
    payload["actions"][0].update(fields)
    return form(payload)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfepayload=1", "not a form-encoded body"),
        (json.dumps(block_actions()).encode(), "not a form-encoded body"),
        (b"", "no payload field"),
        (b"token=abc&user=U1", "no payload field"),
        (form(block_actions()) + b"&" + form(block_actions()), "more than one payload field"),
        (b"payload=%7Bnot-json", "payload is not JSON"),
        (b"payload=", "payload is not JSON"),
        (form([block_actions()]), "payload is not a JSON object"),
        (form("block_actions"), "payload is not a JSON object"),
        (changed(type="view_submission"), "^not a block_actions payload$"),  # nothing echoed
        (changed(type=None), "not a block_actions payload"),
        (changed(actions=[]), "no actions"),
        (changed(actions=None), "no actions"),
        (changed(actions=["approve"]), "no actions"),
        (with_action(action_id="restart"), r"^unknown action \(approve or deny expected\)$"),
        (with_action(action_id=None), "unknown action"),
        (with_action(value="0"), "not a positive integer"),
        (with_action(value="-4"), "not a positive integer"),
        (with_action(value="4.0"), "not a positive integer"),
        (with_action(value="abc"), "not a positive integer"),
        (with_action(value=""), "not a positive integer"),
        (with_action(value=7), "not a positive integer"),
        (with_action(value="9" * 30), "not a positive integer"),
        (with_action(value=str(2**63)), "not a positive integer"),  # beyond SQLite's integers
        (changed(user=None), "missing or malformed user.id"),
        (changed(user={"username": "x"}), "missing or malformed user.id"),
        (changed(user={"id": ""}), "missing or malformed user.id"),
        (changed(user={"id": 17}), "missing or malformed user.id"),
        (changed(user={"id": "U\ud800X"}), "missing or malformed user.id"),  # a lone surrogate
        (changed(user={"id": "u0alice"}), "missing or malformed user.id"),
        (with_action(action_ts=None), "missing or malformed action_ts"),
        (with_action(action_ts="1600857125.4\ud800"), "missing or malformed action_ts"),
    ],
)
def test_bad_interaction_requests_are_input_errors(body: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_interaction(body)


# --- The message -------------------------------------------------------------------------------


def signal(name: str = "LavalinkDown", **fields: Any) -> SignalLine:
    values: dict[str, Any] = {
        "name": name,
        "state": "firing",
        "severity": "critical",
        "category": "instability",
        "value": 0.0,
        "threshold": "up < 1 for 1m",
        "summary": "Lavalink is down",
    }
    values.update(fields)
    return SignalLine(**values)


def card(**fields: Any) -> Card:
    values: dict[str, Any] = {
        "incident": 12,
        "target": "lavalink",
        "primary": "lavalink-rust.service",
        "fallback": "lavalink-java.service",
        "verdict": "rollback",
        "score": 3.0,
        "reason": "LavalinkDown firing (up 0 < 1)",
        "mode": "approve",
        "signals": (
            signal(),
            signal(
                "LavalinkLatencyBudgetFastBurn",
                state="pending",
                category="performance",
                value=0.812,
            ),
            signal("LavalinkSourceFailing", state="nodata", value=None, summary=""),
        ),
        "status": "Awaiting approval (0 of 2)",
        "approval": 7,
        "history": ("10:00:00Z incident opened", "10:00:03Z approval requested"),
    }
    values.update(fields)
    return Card(**values)


def actions_of(message: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [block for block in message if block["type"] == "actions"]


def all_text(message: list[dict[str, Any]]) -> str:
    return json.dumps(message, ensure_ascii=False)


def test_a_card_asking_for_approval_carries_approve_and_deny() -> None:
    message = blocks(card())
    assert blocks_problem(message) is None  # slack_sdk's models accept it
    (actions,) = actions_of(message)
    assert actions["block_id"] == "approval:7"
    approve, deny = actions["elements"]
    assert (approve["action_id"], approve["value"], approve["style"]) == (APPROVE, "7", "primary")
    assert (deny["action_id"], deny["value"], deny["style"]) == (DENY, "7", "danger")
    assert "confirm" not in deny  # denying changes nothing: no second question
    confirm = approve["confirm"]
    assert confirm["text"]["text"] == "Stop `lavalink-rust.service`, start `lavalink-java.service`."
    assert "lavalink" in confirm["title"]["text"]
    assert confirm["style"] == "danger"


def test_no_buttons_without_an_approval_or_once_final() -> None:
    assert actions_of(blocks(card(approval=None))) == []
    assert actions_of(blocks(card(final=True))) == []
    assert actions_of(blocks(card(approval=None, final=True))) == []


def test_the_message_shows_the_decision_signals_status_and_history() -> None:
    message = blocks(card())
    assert message[0]["type"] == "header"
    assert message[0]["text"]["text"] == ":rotating_light: lavalink: rollback"
    text = all_text(message)
    for expected in (
        "`lavalink-rust.service`",
        "`lavalink-java.service`",
        "score 3",
        "mode approve",
        "incident #12",
        "LavalinkDown firing (up 0 &lt; 1)",  # Slack's control characters escaped
        ":red_circle: *LavalinkDown* firing · critical/instability · value 0"
        " · threshold up &lt; 1 for 1m — Lavalink is down",
        "*LavalinkLatencyBudgetFastBurn* pending · critical/performance · value 0.812",
        "*LavalinkSourceFailing* nodata · critical/instability · value no value",
        "*Status* Awaiting approval (0 of 2)",
        "10:00:00Z incident opened\\n10:00:03Z approval requested",
    ):
        assert expected in text
    (context,) = [block for block in message if block["type"] == "context"]
    assert context["elements"][0]["text"].endswith("approval requested")


def test_fallback_text_names_target_verdict_and_status() -> None:
    assert fallback_text(card()) == (
        "lavalink: rollback (score 3, incident #12) — Awaiting approval (0 of 2)"
    )


def test_huge_incidents_stay_within_block_kit_limits() -> None:
    huge = card(
        target="t" * 500,
        primary="p" * 500 + ".service",
        fallback="f" * 500 + ".service",
        reason="<&>" * 20_000,
        status="s" * 10_000,
        signals=tuple(signal(f"Signal{i}", summary="&" * 5_000) for i in range(500)),
        history=tuple(f"10:{i:05d}Z step {i}" for i in range(2_000)),
        approval=10**15,
    )
    message = blocks(huge)
    assert blocks_problem(message) is None
    assert len(message) <= 50
    text = all_text(message)
    assert "more signals" in text  # the cut is said, not silent
    assert "step 1999" in text  # the newest history survives; the oldest goes
    assert "earlier" in text
    assert actions_of(message)[0]["block_id"] == f"approval:{10**15}"
    assert len(fallback_text(huge)) <= 3000


def test_an_incident_without_signals_or_history_is_still_a_valid_message() -> None:
    message = blocks(card(signals=(), history=(), reason="", status="", approval=None))
    assert blocks_problem(message) is None
    assert [block["type"] for block in message] == ["header", "section", "section"]


ENTITY = re.compile(r"&(?!(amp|lt|gt);)")

hostile = st.text(alphabet=st.sampled_from("&<>`*_~ab\n :é😀"), max_size=4_000)


@settings(max_examples=60, deadline=None)
@given(
    target=hostile,
    reason=hostile,
    status=hostile,
    summaries=st.lists(hostile, max_size=30),
    history=st.lists(hostile, max_size=30),
    approval=st.none() | st.integers(min_value=1, max_value=2**63 - 1),
    final=st.booleans(),
)
def test_any_text_gives_a_message_slack_accepts(
    target: str,
    reason: str,
    status: str,
    summaries: list[str],
    history: list[str],
    approval: int | None,
    final: bool,
) -> None:
    built = card(
        target=target,
        primary=target,
        reason=reason,
        status=status,
        signals=tuple(signal(summary=summary, threshold=summary) for summary in summaries),
        history=tuple(history),
        approval=approval,
        final=final,
    )
    message = blocks(built)
    assert blocks_problem(message) is None
    assert bool(actions_of(message)) is (approval is not None and not final)
    for button in [element for block in actions_of(message) for element in block["elements"]]:
        # what Slack sends back for this button parses to the same approval
        clicked = block_actions(action=button["action_id"], value=button["value"])
        assert interaction_of(clicked).approval == approval
    for text in mrkdwn_texts(message):  # never a raw "<" nor an entity cut in half
        assert "<" not in text
        assert not ENTITY.search(text)


def mrkdwn_texts(node: object) -> list[str]:
    if isinstance(node, list):
        return [text for item in node for text in mrkdwn_texts(item)]
    if not isinstance(node, dict):
        return []
    own = [node["text"]] if node.get("type") == "mrkdwn" else []
    return own + [text for value in node.values() for text in mrkdwn_texts(value)]


async def test_silent_drops_everything() -> None:
    silent = Silent()
    await silent.publish(card())
    await silent.aclose()


def test_cards_are_values() -> None:
    first = card()
    assert first == card()
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("path", ["/api/v1/approvals/1", "/healthz", "/alertmanager", "slack"])
def test_an_approval_channel_may_not_take_another_route(path: str) -> None:
    from dataclasses import replace

    from watchdog import config, server, telemetry

    async def nothing() -> None:
        return None

    async def status() -> dict[str, object]:
        return {}

    taken = replace(SlackChannel("s3cr3t-signing"), path=path)
    with pytest.raises(ValueError, match="is taken"):
        server.build_app(
            config.ListenSettings(),
            telemetry.Recorder(),
            operators=(),
            status=status,
            readiness=nothing,
            channels=[taken],
        )
