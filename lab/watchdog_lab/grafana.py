"""A fake Grafana on loopback: the annotations HTTP API, as Grafana's own handlers answer it.

Grafana is not available to the tests, so this answers what the annotator and grafana-client
use, with Grafana's rules as its source has them (pkg/api/annotations.go and the SQL store):
- ``POST /api/annotations``: ``{"message": "Annotation added", "id": N}``; empty ``text`` is
  400 ``Failed to save annotation``; ``time`` 0 means now, ``timeEnd`` 0 means ``time`` (a
  point), an end before the start is swapped; an unknown ``dashboardUID`` is not an error --
  Grafana quietly makes an organisation annotation (dashboardId 0) instead.
- ``PATCH /api/annotations/{id}``: only what is given changes (``tags`` when not null -- an
  empty list clears them; ``text`` when not empty; times when > 0): ``Annotation patched``.
- ``PUT /api/annotations/{id}``: replaces text and tags, times when > 0: ``Annotation updated``.
- ``GET /api/annotations`` (filters ``from``/``to``, ``dashboardUID``, ``dashboardId``,
  ``panelId``, ``userId``, ``tags`` with ``matchAny``, ``type``, ``limit`` default 100; newest
  end first) and ``GET /api/annotations/{id}`` (Grafana 9+), each with the fields Grafana's
  ``ItemDTO`` has; ``DELETE /api/annotations/{id}``; ``GET /api/health`` (no token needed).
- JSON bodies bind as Go's ``encoding/json`` does: keys match case-insensitively, null is the
  zero value, a wrong type (or a fraction for an integer) is 400 ``bad request data``. Tags are
  stored as Grafana stores them: "key:value" pairs, trimmed, duplicates dropped, and only the
  first two parts of "a:b:c" kept.
- A bearer token is required (401 ``{"message": "Unauthorized"}`` otherwise).
Every request is recorded, and the next ones can be told to fail (500, 429 with Retry-After) or
stall.

    async with FakeGrafana(token="glsa_test") as grafana:
        annotator = GrafanaAnnotator(grafana.url, token="glsa_test", ...)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import itertools
import json
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web

USER_ID = 2  # the service account's user
LOGIN = "sa-1-rollback-watchdog"
MAX_TAGS_LENGTH = 500  # Grafana's [annotations] tags_length default
VERSION = "11.3.0"


@dataclass(frozen=True, slots=True)
class Call:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any  # the decoded JSON, None when there was none (or the raw text if not JSON)
    token: str | None  # the bearer token presented
    user_agent: str
    at: float  # time.monotonic() on arrival
    status: int  # the HTTP status answered


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int  # 0: answer normally (after the delay)
    retry_after: int | None
    delay: float


class _BadRequest(Exception):
    pass


class FakeGrafana:
    """Grafana's annotations API on 127.0.0.1, for one ``async with`` block."""

    def __init__(
        self,
        *,
        token: str = "glsa_fake_token",  # noqa: S107 - a fake Grafana's fake token
        dashboards: Iterable[str] | None = None,  # dashboard UIDs; None: any UID exists
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.annotations: dict[int, dict[str, Any]] = {}  # id -> stored item (Grafana's DTO)
        self._any_dashboard = dashboards is None
        self._dashboards = {uid: number for number, uid in enumerate(dashboards or (), 1)}
        self._clock = clock
        self._ids = itertools.count(1)
        self._faults: collections.deque[_Fault] = collections.deque()
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # --- Lifecycle ---

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/api/health", self._health)
        app.router.add_route("*", "/api/annotations", self._collection)
        app.router.add_route("*", "/api/annotations/{id}", self._item)
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
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        """Grafana's root URL, as ``GrafanaSettings.url`` holds it (no trailing "/")."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        """The port listened on."""
        return self._port

    # --- Steering and inspecting ---

    def fail_next(
        self, count: int = 1, *, status: int = 500, retry_after: int | None = None
    ) -> None:
        """Answer the next ``count`` annotation requests with HTTP ``status``."""
        self._faults.extend(_Fault(status, retry_after, 0.0) for _ in range(count))

    def rate_limit_next(self, count: int = 1, *, retry_after: int = 1) -> None:
        """Answer the next ``count`` requests as a rate-limiting proxy would: 429 + Retry-After."""
        self.fail_next(count, status=429, retry_after=retry_after)

    def stall_next(self, count: int = 1, *, seconds: float) -> None:
        """Hold the next ``count`` requests for ``seconds``, then answer them normally."""
        self._faults.extend(_Fault(0, None, seconds) for _ in range(count))

    def calls_to(self, method: str, path_prefix: str = "/api/annotations") -> list[Call]:
        """The recorded calls of one method under a path, in order."""
        return [c for c in self.calls if c.method == method and c.path.startswith(path_prefix)]

    async def wait_calls(self, count: int, *, within: float = 5.0) -> None:
        """Until at least ``count`` requests were answered."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.calls) >= count), within)

    # --- Routes ---

    async def _health(self, request: web.Request) -> web.Response:
        body = {"commit": "fake", "database": "ok", "version": VERSION}
        return await self._answer(request, time.monotonic(), None, body)

    async def _collection(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            return await self._handle(request, self._post)
        if request.method == "GET":
            return await self._handle(request, self._find)
        return await self._answer(
            request, time.monotonic(), None, {"message": "Method Not Allowed"}, 405
        )

    async def _item(self, request: web.Request) -> web.Response:
        handlers: dict[str, Callable[[web.Request, Any], tuple[int, Any]]] = {
            "GET": self._get,
            "PATCH": self._patch,
            "PUT": self._put,
            "DELETE": self._delete,
        }
        handler = handlers.get(request.method)
        if handler is None:
            return await self._answer(
                request, time.monotonic(), None, {"message": "Method Not Allowed"}, 405
            )
        return await self._handle(request, handler)

    async def _handle(
        self, request: web.Request, handler: Callable[[web.Request, Any], tuple[int, Any]]
    ) -> web.Response:
        at = time.monotonic()
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.delay)
        if fault is not None and fault.status:
            headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            message = "Too Many Requests" if fault.status == 429 else "Internal Server Error"
            return await self._answer(
                request, at, body, {"message": message}, fault.status, headers
            )
        if not self._authorized(request):
            return await self._answer(request, at, body, {"message": "Unauthorized"}, 401)
        try:
            status, answer = handler(request, body if raw else None)
        except _BadRequest as exc:
            status, answer = 400, {"message": str(exc)}
        return await self._answer(request, at, body, answer, status)

    async def _answer(
        self,
        request: web.Request,
        at: float,
        body: Any,
        answer: Any,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        self.calls.append(
            Call(
                method=request.method,
                path=request.path,
                query={key: request.query.getall(key) for key in request.query},
                body=body,
                token=_bearer(request),
                user_agent=request.headers.get("User-Agent", ""),
                at=at,
                status=status,
            )
        )
        async with self._changed:
            self._changed.notify_all()
        return web.json_response(answer, status=status, headers=headers)

    def _authorized(self, request: web.Request) -> bool:
        token = _bearer(request)
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    # --- The annotation store, as Grafana's handlers and SQL store behave ---

    def _post(self, request: web.Request, body: Any) -> tuple[int, Any]:
        cmd = _bind(
            body,
            {
                "dashboardid": int,
                "dashboarduid": str,
                "panelid": int,
                "time": int,
                "timeend": int,
                "text": str,
                "tags": list,
                "data": dict,
            },
        )
        dashboard_id, dashboard_uid = cmd.get("dashboardid", 0), None
        uid = cmd.get("dashboarduid", "")
        if uid:
            found = self._dashboard_id(uid)
            if found is not None:  # unknown: Grafana keeps going, as an organisation annotation
                dashboard_id, dashboard_uid = found, uid
        elif dashboard_id:
            dashboard_uid = self._uid_of(dashboard_id)
        if not cmd.get("text"):
            return 400, {"message": "Failed to save annotation"}
        now = self._now()
        start, end = _time_range(cmd.get("time", 0) or now, cmd.get("timeend", 0))
        tags = _tags(cmd.get("tags"))
        if _tags_length(tags) > MAX_TAGS_LENGTH:
            return 400, {"message": "Failed to save annotation"}
        annotation = next(self._ids)
        self.annotations[annotation] = {
            "id": annotation,
            "alertId": 0,
            "alertName": "",
            "dashboardId": dashboard_id,
            "dashboardUID": dashboard_uid,
            "panelId": cmd.get("panelid", 0),
            "userId": USER_ID,
            "newState": "",
            "prevState": "",
            "created": now,
            "updated": now,
            "time": start,
            "timeEnd": end,
            "text": cmd["text"],
            "tags": tags,
            "login": LOGIN,
            "email": "",
            "avatarUrl": "",
            "data": cmd.get("data") or {},
        }
        return 200, {"message": "Annotation added", "id": annotation}

    def _patch(self, request: web.Request, body: Any) -> tuple[int, Any]:
        cmd = _bind(body, {"id": int, "time": int, "timeend": int, "text": str, "tags": list})
        found = self._find_one(request)
        if isinstance(found, tuple):
            return found
        if "tags" in cmd and cmd["tags"] is not None:  # null keeps them, [] clears them
            found["tags"] = _tags(cmd["tags"])
        if cmd.get("text"):
            found["text"] = cmd["text"]
        if cmd.get("time", 0) > 0:
            found["time"] = cmd["time"]
        if cmd.get("timeend", 0) > 0:
            found["timeEnd"] = cmd["timeend"]
        found["time"], found["timeEnd"] = _time_range(found["time"], found["timeEnd"])
        found["updated"] = self._now()
        return 200, {"message": "Annotation patched"}

    def _put(self, request: web.Request, body: Any) -> tuple[int, Any]:
        cmd = _bind(
            body,
            {"id": int, "time": int, "timeend": int, "text": str, "tags": list, "data": dict},
        )
        found = self._find_one(request)
        if isinstance(found, tuple):
            return found
        found["text"] = cmd.get("text", "")  # replaced, even by nothing
        if cmd.get("time", 0) != 0:
            found["time"] = cmd["time"]
        if cmd.get("timeend", 0) != 0:
            found["timeEnd"] = cmd["timeend"]
        if cmd.get("data") is not None:
            found["data"] = cmd["data"]
        found["tags"] = _tags(cmd.get("tags"))
        found["time"], found["timeEnd"] = _time_range(found["time"], found["timeEnd"])
        found["updated"] = self._now()
        return 200, {"message": "Annotation updated"}

    def _delete(self, request: web.Request, body: Any) -> tuple[int, Any]:
        found = self._find_one(request)
        if isinstance(found, tuple):
            return found
        del self.annotations[found["id"]]
        return 200, {"message": "Annotation deleted"}

    def _get(self, request: web.Request, body: Any) -> tuple[int, Any]:
        found = self._find_one(request)
        if isinstance(found, tuple):
            return found
        return 200, _copy(found)

    def _find(self, request: web.Request, body: Any) -> tuple[int, Any]:
        query = request.query
        items = list(self.annotations.values())
        dashboard_id = _query_int(query, "dashboardId")
        uid = query.get("dashboardUID", "")
        if uid:
            found = self._dashboard_id(uid)
            if found is None:
                return 400, {"message": "Invalid dashboard UID in annotation request"}
            dashboard_id = found
        start, end = _query_int(query, "from"), _query_int(query, "to")
        if start > 0 and end > 0:
            items = [a for a in items if a["time"] <= end and a["timeEnd"] >= start]
        for key, field in (("panelId", "panelId"), ("userId", "userId"), ("alertId", "alertId")):
            wanted = _query_int(query, key)
            if wanted:
                items = [a for a in items if a[field] == wanted]
        if dashboard_id:
            items = [a for a in items if a["dashboardId"] == dashboard_id]
        kind = query.get("type", "")
        if kind == "alert":
            items = [a for a in items if a["alertId"] > 0]
        elif kind == "annotation":
            items = [a for a in items if a["alertId"] == 0]
        wanted_tags = _pairs(query.getall("tags", []))
        if wanted_tags:
            match_any = query.get("matchAny", "").lower() in ("true", "1")
            items = [a for a in items if _tag_match(a["tags"], wanted_tags, match_any=match_any)]
        items.sort(key=lambda a: (a["timeEnd"], a["time"]), reverse=True)
        limit = _query_int(query, "limit") or 100
        return 200, [_copy(a) for a in items[:limit]]

    def _find_one(self, request: web.Request) -> dict[str, Any] | tuple[int, Any]:
        try:
            annotation = int(request.match_info["id"])
        except ValueError:
            return 400, {"message": "annotationId is invalid"}
        found = self.annotations.get(annotation)
        if found is None:
            return 404, {"message": "Annotation not found"}
        return found

    def _dashboard_id(self, uid: str) -> int | None:
        """The dashboard's id, None if there is no such dashboard."""
        if uid not in self._dashboards and self._any_dashboard:
            self._dashboards[uid] = len(self._dashboards) + 1
        return self._dashboards.get(uid)

    def _uid_of(self, dashboard_id: int) -> str | None:
        return next((u for u, i in self._dashboards.items() if i == dashboard_id), None)

    def _now(self) -> int:
        return int(self._clock() * 1000)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _bind(body: Any, fields: Mapping[str, type]) -> dict[str, Any]:
    """The body as Go's encoding/json fills a struct: case-insensitive keys (the last of two
    spellings wins), null as the zero value (absent here), unknown keys ignored."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _BadRequest("bad request data")
    cmd: dict[str, Any] = {}
    for key, value in body.items():
        name = key.lower()
        kind = fields.get(name)
        if kind is None:
            continue
        if value is None:
            cmd[name] = None if kind is list else kind()
            continue
        if kind is int:
            # Go parses an int64 from the literal: 1.0 and 1e3 are refused like "1" and true
            ok = (
                isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
            )
        elif kind is list:
            ok = isinstance(value, list) and all(isinstance(tag, str) for tag in value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise _BadRequest("bad request data")
        cmd[name] = value
    return cmd


def _time_range(start: int, end: int) -> tuple[int, int]:
    """Grafana's validateTimeRange: a missing end is the start, and the earlier comes first."""
    if end == 0:
        end = start
    if start == 0:
        start = end
    return (end, start) if end < start else (start, end)


def _pairs(tags: Iterable[str] | None) -> list[tuple[str, str]]:
    """Grafana's ParseTagPairs: "key:value" split at colons (only the first two parts kept),
    both trimmed of spaces, empty keys and duplicates dropped."""
    pairs: list[tuple[str, str]] = []
    for tag in tags or ():
        parts = tag.split(":")
        key = parts[0].strip(" ")
        value = parts[1].strip(" ") if len(parts) > 1 else ""
        if key and (key, value) not in pairs:
            pairs.append((key, value))
    return pairs


def _tags(tags: Iterable[str] | None) -> list[str]:
    """Tags as Grafana stores them (JoinTagPairs of ParseTagPairs)."""
    return [f"{key}:{value}" if value else key for key, value in _pairs(tags)]


def _tags_length(tags: list[str]) -> int:
    """Grafana's estimate of the stored tags' length: their JSON array."""
    return 2 + sum(len(tag) + 2 for tag in tags) + max(len(tags) - 1, 0)


def _tag_match(have: list[str], wanted: list[tuple[str, str]], *, match_any: bool) -> bool:
    stored = _pairs(have)
    hits = [any(key == k and (not value or value == v) for k, v in stored) for key, value in wanted]
    return any(hits) if match_any else all(hits)


def _query_int(query: Mapping[str, str], key: str) -> int:
    """A query parameter as Grafana's QueryInt64 reads it: 0 when absent or not a number."""
    try:
        return int(query.get(key, ""))
    except ValueError:
        return 0


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(item))  # type: ignore[no-any-return]
