"""Profiles: the http profile's judgement of a health answer, and the registry."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from watchdog import config, errors, profiles


def http_target(**health: object) -> config.TargetSettings:
    return config.TargetSettings(
        name="app",
        profile="http",
        primary={"unit": "app-new.service", "job": "app-new"},
        fallback={"unit": "app-old.service", "job": "app-old"},
        rules=["r.yml"],
        runbook={"url": "http://127.0.0.1:8080"},
        health=health,
    )


def answering(*answers: tuple[int, str]) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A client whose server answers these (status, body) in turn; the requests are kept."""
    seen: list[httpx.Request] = []
    queue: Iterator[tuple[int, str]] = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body = next(queue)
        return httpx.Response(status, text=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler)), seen


async def test_a_healthy_answer_is_the_status_and_the_body_matching() -> None:
    service = profiles.get("http").bind(http_target(body='"status": *"ok"'), "")
    http, seen = answering((200, '{"status": "ok"}'), (200, '{"status": "degraded"}'))
    assert [p.name for p in service.probes()] == ["health"]
    good, bad = await service.ready(http), await service.ready(http)
    assert good.ok and good.detail == "/health: HTTP 200"
    assert not bad.ok and bad.conclusive and "does not match" in bad.detail
    assert str(seen[0].url) == "http://127.0.0.1:8080/health"
    assert "authorization" not in seen[0].headers  # no secret configured, none sent


async def test_a_refusal_is_no_data_only_when_we_sent_a_secret() -> None:
    with_secret = profiles.get("http").bind(http_target(), "Bearer s3cr3t-token")
    http, seen = answering((401, ""), (401, ""))
    refused = await with_secret.ready(http)
    assert (
        not refused.ok
        and not refused.conclusive
        and "refused the configured secret" in (refused.detail)
    )
    assert seen[0].headers["authorization"] == "Bearer s3cr3t-token"
    without = profiles.get("http").bind(http_target(), "")
    demanded = await without.ready(http)  # a release that suddenly wants auth: a real failure
    assert not demanded.ok and demanded.conclusive and "401" in demanded.detail


async def test_a_path_that_never_answered_is_no_data_then_a_failure_once_it_had() -> None:
    service = profiles.get("http").bind(http_target(path="/healthz"), "")
    http, _ = answering((404, ""), (200, ""), (404, ""))
    first = await service.ready(http)
    assert not first.ok and not first.conclusive and "check health.path" in first.detail
    assert (await service.ready(http)).ok
    gone = await service.ready(http)  # it answered before: now the release broke it
    assert not gone.ok and gone.conclusive


def test_an_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="unknown profile 'tomcat'"):
        profiles.get("tomcat")


def test_the_lavalink_profile_reads_who_was_affected_from_its_snapshot() -> None:
    lavalink = profiles.get("lavalink")
    stats = {"/v4/stats": {"players": 12, "playingPlayers": 9}}
    assert (
        lavalink.users(stats) == "12 players connected to the primary at the snapshot (9 playing)"
    )
    assert profiles.get("http").users({"health": "x"}) is None
