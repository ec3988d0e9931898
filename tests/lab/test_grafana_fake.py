"""The fake Grafana against an independent client: grafana-client from PyPI.

The annotator's tests are only worth what the fake is worth, so the fake is first driven by a
Grafana client written by other people against real Grafanas -- its requests (with the nulls it
sends), its error classes for 400/401/404/5xx -- and by raw HTTP for what that client lacks
(``GET /api/annotations/{id}``, Go's JSON binding, 429). The client is synchronous
(``requests``), so it runs in a worker thread while the fake answers on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx
import pytest
from grafana_client import GrafanaApi, TokenAuth
from grafana_client.client import (
    GrafanaBadInputError,
    GrafanaClientError,
    GrafanaServerError,
    GrafanaUnauthorizedError,
)

from watchdog_lab.grafana import FakeGrafana

TOKEN = "glsa_fidelity_0123456789abcdef_0a1b2c3d"
DASHBOARD = "rollback-watchdog"
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests routes loopback through a proxy named in the environment too
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def grafana() -> AsyncIterator[FakeGrafana]:
    async with FakeGrafana(token=TOKEN, dashboards={DASHBOARD}, clock=lambda: 1_700_000_000.0) as g:
        yield g


def api(grafana: FakeGrafana, token: str | None = TOKEN) -> GrafanaApi:
    auth = TokenAuth(token) if token is not None else None
    return GrafanaApi(auth=auth, host="127.0.0.1", port=grafana.port, protocol="http", timeout=5)


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one blocking grafana-client call off the loop the fake answers on."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def test_add_then_find_as_grafana_client_sees_it(grafana: FakeGrafana) -> None:
    client = api(grafana)
    added = await call(
        client.annotations.add_annotation,
        dashboard_uid=DASHBOARD,
        time_from=1_700_000_100_000,
        time_to=1_700_000_160_000,
        tags=["rollback-watchdog", "target:lavalink"],
        text="lavalink: rollback",
    )
    assert added == {"message": "Annotation added", "id": 1}
    (post,) = grafana.calls_to("POST")
    # what the client really sends: nulls for what it was not given
    assert post.body == {
        "panelId": None,
        "time": 1_700_000_100_000,
        "timeEnd": 1_700_000_160_000,
        "tags": ["rollback-watchdog", "target:lavalink"],
        "text": "lavalink: rollback",
        "dashboardUID": DASHBOARD,
    }
    assert post.token == TOKEN and post.user_agent.startswith("grafana-client/")
    found = await call(client.annotations.get_annotation, dashboard_uid=DASHBOARD)
    (item,) = found
    # every field of Grafana's ItemDTO, with Grafana's names
    assert set(item) == {
        "id", "alertId", "alertName", "dashboardId", "dashboardUID", "panelId", "userId",
        "newState", "prevState", "created", "updated", "time", "timeEnd", "text", "tags",
        "login", "email", "avatarUrl", "data",
    }  # fmt: skip
    assert item["id"] == 1 and item["dashboardUID"] == DASHBOARD and item["dashboardId"] > 0
    assert (item["time"], item["timeEnd"]) == (1_700_000_100_000, 1_700_000_160_000)
    assert item["tags"] == ["rollback-watchdog", "target:lavalink"]
    assert item["created"] == item["updated"] == 1_700_000_000_000
    assert item["panelId"] == 0 and item["alertId"] == 0


async def test_find_filters_like_grafana(grafana: FakeGrafana) -> None:
    client = api(grafana)
    for start, tags in ((1_000, ["a", "target:x"]), (5_000, ["a", "target:y"]), (9_000, ["b"])):
        await call(client.annotations.add_annotation, time_from=start, tags=tags, text="t")
    by_tags = await call(client.annotations.get_annotation, tags=["a", "target:y"])
    assert [a["time"] for a in by_tags] == [5_000]
    key_only = await call(client.annotations.get_annotation, tags=["target"])
    assert [a["time"] for a in key_only] == [5_000, 1_000]  # newest end first
    window = await call(client.annotations.get_annotation, time_from=4_000, time_to=9_500)
    assert [a["time"] for a in window] == [9_000, 5_000]
    limited = await call(client.annotations.get_annotation, limit=1)
    assert [a["time"] for a in limited] == [9_000]
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as raw:
        any_tag = await raw.get(
            f"{grafana.url}/api/annotations",
            params=[("tags", "b"), ("tags", "target:x"), ("matchAny", "true")],
        )
        unknown = await raw.get(f"{grafana.url}/api/annotations", params={"dashboardUID": "nope"})
    assert [a["time"] for a in any_tag.json()] == [9_000, 1_000]
    assert unknown.status_code == 400
    assert unknown.json() == {"message": "Invalid dashboard UID in annotation request"}


async def test_partial_update_changes_only_what_is_given(grafana: FakeGrafana) -> None:
    client = api(grafana)
    await call(
        client.annotations.add_annotation, time_from=1_000, tags=["keep", "me"], text="start"
    )
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as raw:
        patched = await raw.patch(
            f"{grafana.url}/api/annotations/1", json={"timeEnd": 4_000, "text": "start\nend"}
        )
        assert patched.json() == {"message": "Annotation patched"}
        item = (await raw.get(f"{grafana.url}/api/annotations/1")).json()
    assert (item["time"], item["timeEnd"], item["text"]) == (1_000, 4_000, "start\nend")
    assert item["tags"] == ["keep", "me"]  # absent: kept
    # grafana-client's partial update sends "tags": [] when given none -- and Grafana, which
    # keeps tags only when the field is null, clears them: the annotator never sends that shape
    answer = await call(client.annotations.partial_update_annotation, 1, time_to=5_000)
    assert answer == {"message": "Annotation patched"}
    (patch,) = [c for c in grafana.calls_to("PATCH") if c.user_agent.startswith("grafana")]
    assert patch.body == {"time": None, "timeEnd": 5_000, "tags": [], "text": None}
    item = grafana.annotations[1]
    assert (item["timeEnd"], item["text"], item["tags"]) == (5_000, "start\nend", [])


async def test_update_replaces_text_and_tags(grafana: FakeGrafana) -> None:
    client = api(grafana)
    await call(client.annotations.add_annotation, time_from=1_000, tags=["old"], text="old")
    answer = await call(
        client.annotations.update_annotation, 1, time_to=3_000, tags=["new"], text="new"
    )
    assert answer == {"message": "Annotation updated"}
    item = grafana.annotations[1]
    assert (item["time"], item["timeEnd"], item["text"], item["tags"]) == (
        1_000,
        3_000,
        "new",
        ["new"],
    )


async def test_refusals_raise_grafana_clients_own_errors(grafana: FakeGrafana) -> None:
    with pytest.raises(GrafanaUnauthorizedError):
        await call(api(grafana, "glsa_wrong").annotations.add_annotation, text="x")
    with pytest.raises(GrafanaUnauthorizedError):
        await call(api(grafana, None).annotations.get_annotation)
    client = api(grafana)
    with pytest.raises(GrafanaBadInputError) as empty:
        await call(client.annotations.add_annotation, time_from=1_000, text="")
    assert empty.value.response == {"message": "Failed to save annotation"}
    with pytest.raises(GrafanaClientError) as missing:
        await call(client.annotations.partial_update_annotation, 42, text="x")
    assert missing.value.status_code == 404
    assert missing.value.response == {"message": "Annotation not found"}
    grafana.fail_next(1, status=500)
    with pytest.raises(GrafanaServerError) as failed:
        await call(client.annotations.add_annotation, text="x")
    assert failed.value.status_code == 500
    assert grafana.annotations == {}  # nothing was stored by any of these
    assert [c.status for c in grafana.calls] == [401, 401, 400, 404, 500]


async def test_health_needs_no_token(grafana: FakeGrafana) -> None:
    health = await call(api(grafana, None).health.check)
    assert health["database"] == "ok" and health["version"]


async def test_times_and_tags_are_stored_as_grafana_stores_them(grafana: FakeGrafana) -> None:
    client = api(grafana)
    point = await call(client.annotations.add_annotation, time_from=2_000, text="point")
    swapped = await call(
        client.annotations.add_annotation, time_from=9_000, time_to=3_000, text="swap"
    )
    now = await call(client.annotations.add_annotation, text="now")
    tagged = await call(
        client.annotations.add_annotation,
        time_from=1,
        tags=[" env : prod ", "a:b:c", "x", "x", " ", "incident:7"],
        text="tags",
    )
    store = grafana.annotations
    assert (store[point["id"]]["time"], store[point["id"]]["timeEnd"]) == (2_000, 2_000)
    assert (store[swapped["id"]]["time"], store[swapped["id"]]["timeEnd"]) == (3_000, 9_000)
    assert store[now["id"]]["time"] == store[now["id"]]["timeEnd"] == 1_700_000_000_000
    assert store[tagged["id"]]["tags"] == ["env:prod", "a:b", "x", "incident:7"]


async def test_unknown_dashboard_becomes_an_organisation_annotation(grafana: FakeGrafana) -> None:
    added = await call(api(grafana).annotations.add_annotation, dashboard_uid="gone", text="x")
    item = grafana.annotations[added["id"]]
    assert (item["dashboardId"], item["dashboardUID"]) == (0, None)


async def test_bodies_bind_as_go_binds_them(grafana: FakeGrafana) -> None:
    url = f"{grafana.url}/api/annotations"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as raw:
        fraction = await raw.post(url, json={"time": 1.5, "text": "x"})
        whole_float = await raw.post(url, json={"time": 1000.0, "text": "x"})
        as_string = await raw.post(url, json={"time": "1000", "text": "x"})
        bad_tags = await raw.post(url, json={"tags": [1], "text": "x"})
        not_json = await raw.post(url, content=b"{", headers={"Content-Type": "application/json"})
        not_object = await raw.post(url, json=["x"])
        any_case = await raw.post(url, json={"TEXT": "upper", "Time": 5, "unknown": True})
        too_many_tags = await raw.post(url, json={"text": "x", "tags": ["t" * 600]})
        bad_id = await raw.patch(f"{url}/abc", json={"text": "x"})
        by_id = await raw.get(f"{url}/{any_case.json()['id']}")
        no_such = await raw.get(f"{url}/999")
    refused = [fraction, whole_float, as_string, bad_tags, not_json, not_object]
    assert [r.status_code for r in refused] == [400] * 6
    assert all(r.json() == {"message": "bad request data"} for r in refused)
    assert any_case.status_code == 200
    assert by_id.json()["text"] == "upper" and by_id.json()["time"] == 5
    assert too_many_tags.status_code == 400
    assert bad_id.status_code == 400 and bad_id.json() == {"message": "annotationId is invalid"}
    assert no_such.status_code == 404


async def test_faults_can_be_injected(grafana: FakeGrafana) -> None:
    grafana.rate_limit_next(1, retry_after=3)
    grafana.stall_next(1, seconds=0.3)
    url = f"{grafana.url}/api/annotations"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as raw:
        limited = await raw.get(url)
        started = time.monotonic()
        stalled = await raw.get(url)
        took = time.monotonic() - started
        normal = await raw.get(url)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert limited.json() == {"message": "Too Many Requests"}
    assert stalled.status_code == 200 and took >= 0.3
    assert normal.status_code == 200
    await grafana.wait_calls(3, within=1.0)
    assert [c.status for c in grafana.calls] == [429, 200, 200]
