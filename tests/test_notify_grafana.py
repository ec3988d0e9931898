"""The Grafana annotator end to end against the fake Grafana (tests/lab/test_grafana_fake.py
checks the fake against grafana-client): real HTTP on loopback, the incident's cards as the gate
publishes them, and what Grafana ends up holding, read back through its own API.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

import watchdog
from watchdog import errors, logs
from watchdog.notify import Card
from watchdog.notify import grafana as grafana_module
from watchdog.notify.grafana import GrafanaAnnotator
from watchdog_lab.grafana import FakeGrafana

TOKEN = "glsa_annotator_secret_7f3e9a1b2c4d"
DASHBOARD = "rollback-watchdog"
START = 1_800_000_000.0


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx routes loopback through a proxy named in the environment too
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def grafana() -> AsyncIterator[FakeGrafana]:
    async with FakeGrafana(token=TOKEN, dashboards={DASHBOARD}) as fake:
        yield fake


class Clock:
    """The annotator's clock, moved by the test."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Make:
    """Annotators for one test, each pointed at the fake and closed when the test ends."""

    def __init__(self, grafana: FakeGrafana) -> None:
        self.grafana = grafana
        self.made: list[GrafanaAnnotator] = []

    def __call__(self, clock: Clock | None = None, **options: Any) -> GrafanaAnnotator:
        settings: dict[str, Any] = {
            "token": TOKEN,
            "dashboard_uid": DASHBOARD,
            "tags": ["rollback-watchdog"],
            "timeout": 2.0,
            "clock": clock or Clock(),
        }
        settings.update(options)
        url = settings.pop("url", self.grafana.url)
        made = GrafanaAnnotator(url, **settings)
        self.made.append(made)
        return made


@pytest.fixture
async def annotator(grafana: FakeGrafana) -> AsyncIterator[Make]:
    make = Make(grafana)
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
        "score": 1.0,
        "reason": "LavalinkDown firing",
        "mode": "auto",
        "signals": (),
        "status": status,
    }
    values.update(fields)
    return Card(**values)


def failures(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "grafana annotation failed"]


async def stored(grafana: FakeGrafana, **params: Any) -> list[dict[str, Any]]:
    """Grafana's annotations, read back through its API."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        answer = await client.get(f"{grafana.url}/api/annotations", params=params)
    answer.raise_for_status()
    result: list[dict[str, Any]] = answer.json()
    return result


async def test_one_region_per_rollback_from_start_to_end(
    grafana: FakeGrafana, annotator: Make
) -> None:
    clock = Clock()
    notes = annotator(clock)
    # an approve-mode incident, as the gate tells it
    await notes.publish(card(status="Awaiting approval (0 of 1)", approval=3, mode="approve"))
    assert grafana.calls == []
    await notes.publish(card(status="Rolling back", mode="approve"))
    for step in range(1, 4):
        clock.now += 5
        await notes.publish(card(status=f"Rolling back: step {step}/9 preflight"))
    clock.now = START + 42.5
    await notes.publish(card(status="Rollback succeeded: fallback verified", final=True))
    await notes.aclose()

    assert [(c.method, c.path, c.status) for c in grafana.calls] == [
        ("POST", "/api/annotations", 200),
        ("PATCH", "/api/annotations/1", 200),
    ]
    assert all(c.token == TOKEN for c in grafana.calls)
    assert grafana.calls[0].user_agent == f"rollback-watchdog/{watchdog.__version__}"
    assert grafana.calls[0].body == {
        "time": 1_800_000_000_000,
        "tags": ["rollback-watchdog", "target:lavalink", "incident:7"],
        "text": "lavalink: rollback lavalink-rust.service -> lavalink-java.service:"
        " LavalinkDown firing",
        "dashboardUID": DASHBOARD,
    }
    (region,) = await stored(grafana, dashboardUID=DASHBOARD, tags="incident:7")
    assert (region["time"], region["timeEnd"]) == (1_800_000_000_000, 1_800_000_042_500)
    assert region["text"] == (
        "lavalink: rollback lavalink-rust.service -> lavalink-java.service: LavalinkDown firing\n"
        "Rollback succeeded: fallback verified"
    )
    assert region["tags"] == ["rollback-watchdog", "target:lavalink", "incident:7"]
    assert notes.remembered == 1  # only the closed incident's id, against a repeated final card


async def test_auto_mode_start_and_a_failed_run_also_make_one_region(
    grafana: FakeGrafana, annotator: Make
) -> None:
    clock = Clock()
    notes = annotator(clock)
    await notes.publish(card(status="Rollback started"))  # auto mode's first status
    clock.now += 10
    await notes.publish(card(status="Rollback failed: Java unit did not start", final=True))
    (region,) = await stored(grafana)
    assert region["timeEnd"] - region["time"] == 10_000
    assert region["text"].endswith("\nRollback failed: Java unit did not start")


async def test_cards_that_are_not_about_a_rollback_draw_nothing(
    grafana: FakeGrafana, annotator: Make
) -> None:
    notes = annotator()
    for status in (
        "Notified (log only)",
        "Would roll back (observe mode)",
        "Awaiting approval (0 of 2)",
        "Would ask a human to approve a rollback (observe mode)",
        "Denied by U0123",
        "Not started",
    ):
        await notes.publish(card(incident=1, status=status))
    await notes.publish(card(incident=2, status="Denied by U0123", final=True))
    assert grafana.calls == []
    assert notes.remembered == 0


async def test_a_final_card_without_a_start_makes_a_point(
    grafana: FakeGrafana, annotator: Make
) -> None:
    notes = annotator()  # as after a restart: this process never saw the start
    await notes.publish(card(status="Rollback succeeded: verified", final=True))
    await notes.publish(card(status="Rollback succeeded: verified", final=True))  # a repeat
    assert [c.method for c in grafana.calls] == ["POST"]
    (point,) = await stored(grafana)
    assert point["time"] == point["timeEnd"] == 1_800_000_000_000
    assert point["text"].endswith("LavalinkDown firing\nRollback succeeded: verified")


async def test_server_errors_are_retried(grafana: FakeGrafana, annotator: Make) -> None:
    grafana.fail_next(2, status=500)
    notes = annotator(retries=2)
    with capture_logs() as logs:
        await notes.publish(card())
    assert [c.status for c in grafana.calls] == [500, 500, 200]
    assert len(grafana.annotations) == 1
    assert failures(logs) == []


async def test_a_start_that_never_arrived_is_sent_whole_with_the_end(
    grafana: FakeGrafana, annotator: Make
) -> None:
    clock = Clock()
    notes = annotator(clock, retries=0)
    grafana.fail_next(1, status=503)
    with capture_logs() as logs:
        await notes.publish(card(status="Rolling back"))
    (failed,) = failures(logs)
    assert failed["status"] == 503 and failed["attempts"] == 1
    clock.now += 30
    await notes.publish(card(status="Rollback succeeded: verified", final=True))
    assert [(c.method, c.status) for c in grafana.calls] == [("POST", 503), ("POST", 200)]
    (region,) = await stored(grafana)
    assert (region["time"], region["timeEnd"]) == (1_800_000_000_000, 1_800_000_030_000)


async def test_a_progress_card_creates_what_the_start_could_not(
    grafana: FakeGrafana, annotator: Make
) -> None:
    notes = annotator(retries=0)
    grafana.fail_next(1, status=502)
    with capture_logs():
        await notes.publish(card(status="Rolling back"))
    await notes.publish(card(status="Rolling back: step 2/9 backup"))
    await notes.publish(card(status="Rolling back: step 3/9 record"))
    await notes.publish(card(status="Rollback succeeded: verified", final=True))
    assert [(c.method, c.status) for c in grafana.calls] == [
        ("POST", 502),
        ("POST", 200),
        ("PATCH", 200),
    ]
    (region,) = await stored(grafana)
    assert region["time"] == 1_800_000_000_000  # the run's start, not the retry's


async def test_a_refused_token_is_logged_not_raised_and_never_logged(
    grafana: FakeGrafana, annotator: Make
) -> None:
    wrong = "glsa_wrong_token_that_must_not_leak_91"
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        notes = annotator(token=wrong)
        await notes.publish(card())
        await notes.aclose()
    finally:
        logs.reset()
    assert [c.status for c in grafana.calls] == [401]  # a 4xx is never retried
    logged = stream.getvalue()
    assert "grafana annotation failed" in logged and "HTTP 401: Unauthorized" in logged
    assert f"127.0.0.1:{grafana.port}" in logged
    assert wrong not in logged and TOKEN not in logged


async def test_a_refused_annotation_is_not_retried(grafana: FakeGrafana, annotator: Make) -> None:
    notes = annotator(tags=["t" * 600])  # over Grafana's tags length
    with capture_logs() as logs:
        await notes.publish(card())
    assert [c.status for c in grafana.calls] == [400]
    (failed,) = failures(logs)
    assert failed["error"] == "HTTP 400: Failed to save annotation"


async def test_a_rate_limit_waits_retry_after(grafana: FakeGrafana, annotator: Make) -> None:
    grafana.rate_limit_next(1, retry_after=1)
    await annotator().publish(card())
    limited, accepted = grafana.calls
    assert (limited.status, accepted.status) == (429, 200)
    assert 1.0 <= accepted.at - limited.at < 1.5


async def test_unreachable_and_stalled_grafana_are_logged_within_bounds(
    grafana: FakeGrafana, annotator: Make
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    gone = annotator(url=f"http://127.0.0.1:{port}", timeout=1.0, retries=1)
    grafana.stall_next(5, seconds=10)
    slow = annotator(timeout=0.3, retries=1)
    with capture_logs() as logs:
        started = time.monotonic()
        await asyncio.gather(gone.publish(card(incident=1)), slow.publish(card(incident=2)))
        took = time.monotonic() - started
    assert took < 3.0, took
    refused, stalled = sorted(failures(logs), key=lambda entry: entry["incident"])
    assert refused["error"].startswith("ConnectError") and refused["attempts"] == 2
    assert stalled["error"] == "no answer within 0.3s" and stalled["attempts"] == 2


async def test_an_organisation_annotation_has_no_dashboard(
    grafana: FakeGrafana, annotator: Make
) -> None:
    notes = annotator(dashboard_uid=None, tags=[])
    await notes.publish(card())
    assert "dashboardUID" not in grafana.calls[0].body
    (item,) = await stored(grafana)
    assert (item["dashboardId"], item["dashboardUID"]) == (0, None)
    assert item["tags"] == ["target:lavalink", "incident:7"]


async def test_concurrent_incidents_each_get_their_own_region(
    grafana: FakeGrafana, annotator: Make
) -> None:
    notes = annotator()
    grafana.stall_next(1, seconds=0.2)  # the first start answers late: its end must wait
    tasks = []
    for incident in range(1, 6):
        tasks.append(asyncio.create_task(notes.publish(card(incident=incident))))
        tasks.append(
            asyncio.create_task(
                notes.publish(card(incident=incident, status="Rollback x", final=True))
            )
        )
    await asyncio.gather(*tasks)
    items = await stored(grafana)
    assert len(items) == 5
    assert sorted(i["tags"][-1] for i in items) == [f"incident:{n}" for n in range(1, 6)]
    assert all(i["text"].endswith("\nRollback x") for i in items)
    assert len(grafana.calls_to("PATCH")) == 5


async def test_memory_stays_bounded(annotator: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grafana_module, "MAX_DONE", 3)
    monkeypatch.setattr(grafana_module, "MAX_OPEN", 2)
    notes = annotator()
    for incident in range(1, 11):
        await notes.publish(card(incident=incident))
        await notes.publish(card(incident=incident, status="Rollback done", final=True))
    assert notes.remembered == 3
    with capture_logs() as logs:
        for incident in range(20, 24):  # starts without ends
            await notes.publish(card(incident=incident))
    assert notes.remembered == 3 + 2
    assert [
        e["incident"] for e in logs if e["event"] == "grafana forgot an unfinished rollback"
    ] == [
        20,
        21,
    ]


async def test_closed_annotator_drops_cards(grafana: FakeGrafana, annotator: Make) -> None:
    notes = annotator()
    await notes.aclose()
    with capture_logs() as logs:
        await notes.publish(card())
    assert grafana.calls == []
    assert [e["event"] for e in logs] == ["grafana closed; card dropped"]


def test_bad_settings_are_input_errors() -> None:
    with pytest.raises(errors.InputError):
        GrafanaAnnotator("ftp://x", token=TOKEN, dashboard_uid=None, tags=[], timeout=1)
    with pytest.raises(errors.InputError):
        GrafanaAnnotator("http://x", token="two words", dashboard_uid=None, tags=[], timeout=1)
    with pytest.raises(errors.InputError):
        GrafanaAnnotator("http://x", token=TOKEN, dashboard_uid=None, tags=[], timeout=0)
