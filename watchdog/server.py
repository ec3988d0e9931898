"""The watchdog's one HTTP listener: metrics, health, Alertmanager, Slack and the operator API.

One aiohttp server on ``listen`` (loopback by default) serves every route, so there is one port
to secure and one place that turns a request into data:

- ``GET /metrics``, ``/healthz``, ``/readyz``: open (Prometheus and systemd read them);
- ``POST /alertmanager``: Alertmanager's webhook, with its own bearer token; answered at once
  (Alertmanager retries a slow receiver), the alerts are kept and evaluated after;
- ``POST /slack/interactions``: a button click, signed by Slack over the raw body; acknowledged
  at once (Slack wants an answer within 3 s), the vote is counted after;
- ``/api/v1/...``: the operator API (status, incidents, ``rollback``, ``approvals/{id}``) with
  an operator's token. Every other path wants one too: new routes are closed by default.

Each operator has a token of their own (``listen.operators``; the shared ``listen.token_*`` is
one more, named ``listen.token_name``): the token names the person, the body never does, so a
vote or an order is journaled under the name its token proves.

Every failure this module answers is a JSON 4xx naming the problem without echoing what was
sent (a request line or header aiohttp cannot parse gets aiohttp's own 400). Bodies are capped
at ``body_limit`` (413), idle or dripping connections are cut at ``request_timeout``, and an
answer that takes longer is a 503. Tokens are compared in constant time and never logged; a
route whose secret is not configured answers 403, the rest still serves. Refusals are counted
per route and status (a metric, and a ``Tally`` in the log: a flood is a few lines), and a
request aiohttp cannot even parse is counted the same way -- its raw headers, which may hold a
token, never reach the log. Nothing here acts: handlers parse and validate, then hand plain
values to ``Orders`` (the gate, in the daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, Literal, Protocol, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from watchdog import approval, config, credentials, errors, gate, logs, telemetry
from watchdog.notify import channel
from watchdog.sources import alertmanager

log = structlog.get_logger("watchdog.server")

OPEN_PATHS: Final = frozenset({"/metrics", "/healthz", "/readyz"})
SELF_AUTHENTICATED: Final = frozenset({"/alertmanager"})  # and every channel's route
Status = Callable[[], Awaitable[dict[str, Any]]]
"""The operator status document, built from the journal."""
Readiness = Callable[[], Awaitable[str | None]]
"""None when ready, else what is not (the journal, a stalled loop)."""
_ID = re.compile(r"[1-9][0-9]{0,17}")  # positive, and fits SQLite's integer


class Orders(Protocol):
    """What the routes hand their validated requests to (the daemon's gate)."""

    async def ingest(self, delivery: alertmanager.Delivery) -> None:
        """Keep and evaluate an Alertmanager notification (after it was answered)."""

    async def click(self, click: channel.Click) -> None:
        """Count an approval channel's click (after it was acknowledged)."""

    async def vote(
        self, approval_id: int, vote: approval.Vote, nonce: str | None
    ) -> tuple[approval.Ruling, dict[str, Any] | None]:
        """Count an approve/deny from the API; the approval as it stands after."""

    async def fleet_vote(
        self, incident: int, vote: approval.Vote, nonce: str | None
    ) -> tuple[approval.Ruling, dict[str, Any] | None]:
        """Count an approve/deny on a fleet incident; the incident as it stands after."""

    async def rollback(self, order: gate.RollbackOrder) -> approval.Answer:
        """An operator's rollback order."""

    async def incident(self, incident_id: int) -> dict[str, Any] | None:
        """One incident with its decisions, approvals, runs and steps."""


class Fleet(Protocol):
    """Fleet mode's operator surface (``runtime.fleet.FleetLink``)."""

    async def status(self) -> dict[str, Any]:
        """The group as the store has it (or that it is unreachable)."""

    async def resume(self, by: str) -> bool:
        """Let a halted group switch again; False if it was not halted."""

    async def approve_waves(self, by: str) -> list[str]:
        """Start the group's proposed rollouts; the releases started."""


@dataclass(frozen=True)
class Context:
    """What the handlers need, given once at wiring time."""

    settings: config.ListenSettings
    recorder: telemetry.Recorder
    operators: tuple[credentials.Identity, ...] = field(repr=False)  # (): the API is off
    status: Status
    readiness: Readiness
    refusals: logs.Tally
    orders: Orders | None = None  # None: nothing can be ordered (503)
    alertmanager_token: str = field(default="", repr=False)  # "" when the receiver is off
    channels: tuple[channel.Channel, ...] = ()  # approval channels: each one's inbound route
    clock: Callable[[], float] = time.time
    fleet: Fleet | None = None  # fleet mode off: its routes answer 404
    pending: set[asyncio.Task[None]] = field(default_factory=set)  # work after the answer


_CONTEXT: Final = web.AppKey("context", Context)
_WHO: Final = web.RequestKey("who", str)  # the operator the request's token names
_WHY: Final = web.RequestKey("why", str)  # a refusal's reason, for the tally (fixed words)
REFUSALS_EVERY = 60.0  # seconds: refused requests are logged as one line per this at most
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def problem(status: int, message: str, **headers: str) -> web.Response:
    """A JSON error answer: ``{"error": <reason phrase>, "message": <what is wrong>}``."""
    return web.json_response(
        {"error": HTTPStatus(status).phrase, "message": message}, status=status, headers=headers
    )


@web.middleware
async def _bounded(request: web.Request, handler: Callable[..., Awaitable[Any]]) -> Any:
    """Errors become JSON answers; nothing is echoed back; every request has a deadline, and a
    body over the limit is refused before any handler runs (whether or not it reads it)."""
    answer = await _answer(request, handler)
    if isinstance(answer, web.StreamResponse) and answer.status >= 400:
        _refused(request, answer.status)
    return answer


def _refused(request: web.Request, status: int) -> None:
    """Count a refusal: a metric per route and status, and one tally line per interval."""
    context = request.app[_CONTEXT]
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource is not None else "(no route)"
    context.recorder.refused.labels(route, str(status)).inc()
    why = request.get(_WHY, HTTPStatus(status).phrase)
    method = request.method if request.method in _METHODS else "OTHER"  # any token is a method
    context.refusals.add(f"{method} {route} {status}: {why}")


async def _answer(request: web.Request, handler: Callable[..., Awaitable[Any]]) -> Any:
    limit = request.app[_CONTEXT].settings.body_limit
    if request.content_length is not None and request.content_length > limit:
        return problem(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {limit} bytes")
    try:
        async with asyncio.timeout(request.app[_CONTEXT].settings.request_timeout):
            return await handler(request)
    except errors.JournalLost as exc:  # no new action: logged once where it was found
        return problem(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
    except web.HTTPRequestEntityTooLarge as exc:  # a chunked body, counted while read
        return problem(exc.status, f"the body is over {limit} bytes")
    except RequestPayloadError:  # a body that ends early or does not decode
        return problem(HTTPStatus.BAD_REQUEST, "the body could not be read")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return problem(exc.status, f"{request.method} is not allowed here", Allow=allowed)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return problem(exc.status, exc.reason)
        raise
    except TimeoutError:
        return problem(HTTPStatus.SERVICE_UNAVAILABLE, "the answer took too long; try again")
    except Exception:  # a bug: logged with its traceback, answered without details
        log.exception("request failed", method=request.method, path=request.path)
        return problem(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (logged)")


@web.middleware
async def _authorized(request: web.Request, handler: Callable[..., Awaitable[Any]]) -> Any:
    """Closed by default: every path but the open ones and those that check their own
    credentials (Alertmanager's token, Slack's signature) wants the operator token."""
    own = {c.path for c in request.app[_CONTEXT].channels}  # a channel proves its own requests
    if request.path in OPEN_PATHS or request.path in SELF_AUTHENTICATED or request.path in own:
        return await handler(request)
    operators = request.app[_CONTEXT].operators
    if not operators:
        return problem(
            HTTPStatus.FORBIDDEN,
            "the operator API is off: configure listen.operators or listen.token_file",
        )
    who = credentials.identify(_presented(request), operators)
    if who is None:
        return _unauthorized(request)
    request[_WHO] = who
    return await handler(request)


def _presented(request: web.Request) -> str:
    """The bearer token of the request ("" without one); the header itself is never logged."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return presented.strip() if scheme.lower() == "bearer" else ""


def _unauthorized(request: web.Request) -> web.Response:
    request[_WHY] = "missing or wrong bearer token"
    return problem(
        HTTPStatus.UNAUTHORIZED,
        "a valid bearer token is required",
        **{"WWW-Authenticate": "Bearer"},
    )


def _bearer(request: web.Request, token: str, off: str) -> web.Response | None:
    """None when ``Authorization: Bearer <token>`` is right; else the answer (401, or 403
    when no token is configured, with ``off`` saying how to configure one)."""
    if not token:
        return problem(HTTPStatus.FORBIDDEN, off)
    if not credentials.matches(_presented(request), token):
        return _unauthorized(request)
    return None


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[_CONTEXT].recorder.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    try:
        not_ready = await request.app[_CONTEXT].readiness()
    except Exception as exc:  # cannot tell: that is not ready either
        not_ready = f"readiness could not be checked: {type(exc).__name__}"
    if not_ready is not None:
        return web.json_response({"ready": False, "problem": not_ready}, status=503)
    return web.json_response({"ready": True})


async def _status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[_CONTEXT].status())


def _later(context: Context, work: Awaitable[None], what: str) -> None:
    """Do ``work`` after the answer is sent; a failure is logged, the sender already has 2xx."""

    async def guarded() -> None:
        try:
            await work
        except errors.JournalLost:  # logged once where it was found: nothing is taken now
            context.recorder.refused.labels(f"{what} (after the answer)", "503").inc()
        except Exception:
            log.exception("processing after the answer failed", what=what)

    task = asyncio.get_running_loop().create_task(guarded())
    context.pending.add(task)
    task.add_done_callback(context.pending.discard)


def _orders(context: Context) -> Orders:
    if context.orders is None:
        raise web.HTTPServiceUnavailable(reason="this listener takes no orders")
    return context.orders


async def _alertmanager(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    refused = _bearer(
        request,
        context.alertmanager_token,
        "the Alertmanager receiver is off: configure alertmanager.token_file or token_env",
    )
    if refused is not None:
        return refused
    orders = _orders(context)
    try:
        delivery = alertmanager.parse(await request.read())
    except errors.InputError as exc:
        return problem(HTTPStatus.BAD_REQUEST, str(exc))
    context.recorder.alerts_received.inc(len(delivery.alerts))
    _later(context, orders.ingest(delivery), "alertmanager")
    return web.json_response({"accepted": len(delivery.alerts)})


def _clicks(inbound: channel.Channel) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The route of one approval channel: verified over the raw body, then read, then
    acknowledged at once (Slack wants an answer within 3 s); the vote is counted after."""

    async def handle(request: web.Request) -> web.Response:
        context = request.app[_CONTEXT]
        if inbound.off is not None:
            return problem(HTTPStatus.FORBIDDEN, inbound.off)
        body = await request.read()
        wrong = inbound.verify(request.headers, body, now=context.clock())
        if wrong is not None:
            request[_WHY] = wrong
            return problem(HTTPStatus.UNAUTHORIZED, wrong)
        try:
            click = inbound.parse(body)
        except errors.InputError as exc:
            return problem(HTTPStatus.BAD_REQUEST, str(exc))
        orders = _orders(context)
        # the vote is the channel's, whatever its parser wrote (the audit trail, the metrics)
        _later(context, orders.click(dataclasses.replace(click, via=inbound.name)), inbound.name)
        return web.Response(status=HTTPStatus.OK)  # the acknowledgement: an empty 200

    return handle


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _RollbackBody(_Request):
    reason: str = Field(min_length=1, max_length=2000)
    category: Literal["manual", "security"] = "manual"
    target: str | None = Field(default=None, max_length=200)
    request_id: str | None = Field(default=None, min_length=1, max_length=128)


class _VoteBody(_Request):
    decision: Literal["approve", "deny"]
    request_id: str | None = Field(default=None, min_length=1, max_length=128)


async def _body(request: web.Request, shape: type[_Request]) -> Any:
    """The JSON body validated against ``shape``; a 400 naming the first problem otherwise."""
    raw = await request.read()
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, a giant integer
        raise _BadRequest("the body is not JSON (or nests or counts beyond reason)") from None
    if not isinstance(document, dict):
        raise _BadRequest("the body must be a JSON object")
    if "by" in document:  # the token says who: nobody can claim to be someone else
        raise _BadRequest("by: the token names who you are; leave by out")
    try:
        return shape.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        if first["type"] == "missing":
            message = "required field is missing"
        raise _BadRequest(f"{where}: {message}") from None


_BadRequest = errors.BadRequest


_REFUSED_STATUS: Final = {
    approval.Refusal.NOT_FOUND: HTTPStatus.NOT_FOUND,
    approval.Refusal.FORBIDDEN: HTTPStatus.FORBIDDEN,
    approval.Refusal.DECIDED: HTTPStatus.CONFLICT,
    approval.Refusal.EXPIRED: HTTPStatus.CONFLICT,
    approval.Refusal.DUPLICATE: HTTPStatus.CONFLICT,
    approval.Refusal.DISARMED: HTTPStatus.CONFLICT,
    approval.Refusal.OVERTAKEN: HTTPStatus.CONFLICT,
    approval.Refusal.IN_FLIGHT: HTTPStatus.CONFLICT,
    approval.Refusal.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
}


async def _rollback(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    try:
        body: _RollbackBody = await _body(request, _RollbackBody)
    except _BadRequest as exc:
        return problem(HTTPStatus.BAD_REQUEST, exc.message)
    if not body.reason.strip():
        return problem(HTTPStatus.BAD_REQUEST, "reason: must say why")
    who = request[_WHO]
    order = gate.RollbackOrder(
        target=body.target,
        reason=body.reason.strip(),
        category=body.category,
        by=who,
        via="api",
        # one sender's request id: another's refused request cannot burn it
        nonce=f"api-rollback:{who}:{body.request_id}" if body.request_id else None,
    )
    answer = await _orders(context).rollback(order)
    if answer.refusal is approval.Refusal.REPLAY:
        return web.json_response({"ignored": True, "message": answer.message})
    if answer.refusal is not None:
        return problem(_REFUSED_STATUS[answer.refusal], answer.message)
    return web.json_response(
        {"incident": answer.incident, "by": who, "message": answer.message},
        status=HTTPStatus.ACCEPTED,
    )


async def _vote(request: web.Request) -> web.Response:
    return await _voted(request, fleet=False)


async def _fleet_vote(request: web.Request) -> web.Response:
    """A vote on a fleet incident (the id from its message or ``fleet status``)."""
    _fleet(request.app[_CONTEXT])
    return await _voted(request, fleet=True)


async def _voted(request: web.Request, *, fleet: bool) -> web.Response:
    """One approve/deny through the API, on a local approval or on a fleet incident's; the
    token names the voter, a ``request_id`` makes a retry count once."""
    context = request.app[_CONTEXT]
    key, what = ("incident", "the fleet incident id") if fleet else ("approval", "the approval id")
    raw_id = request.match_info[key]
    if not _ID.fullmatch(raw_id):
        return problem(HTTPStatus.BAD_REQUEST, f"{what} must be a positive integer")
    try:
        body: _VoteBody = await _body(request, _VoteBody)
    except _BadRequest as exc:
        return problem(HTTPStatus.BAD_REQUEST, exc.message)
    who = request[_WHO]
    vote = approval.Vote(
        approve=body.decision == "approve", identities=(who,), via="api", at=context.clock()
    )
    kind = "api-fleet-vote" if fleet else "api-vote"
    nonce = f"{kind}:{raw_id}:{who}:{body.request_id}" if body.request_id else None
    orders = _orders(context)
    count = orders.fleet_vote if fleet else orders.vote
    ruling, current = await count(int(raw_id), vote, nonce)
    if ruling.refusal is approval.Refusal.REPLAY:
        return web.json_response({"ignored": True, "message": ruling.message})
    if ruling.refusal is not None:
        return problem(_REFUSED_STATUS[ruling.refusal], ruling.message)
    return web.json_response(
        {"message": ruling.message, "status": ruling.status.value, key: current}
    )


async def _incident(request: web.Request) -> web.Response:
    raw_id = request.match_info["incident"]
    if not _ID.fullmatch(raw_id):
        return problem(HTTPStatus.BAD_REQUEST, "the incident id must be a positive integer")
    found = await _orders(request.app[_CONTEXT]).incident(int(raw_id))
    if found is None:
        return problem(HTTPStatus.NOT_FOUND, f"there is no incident #{raw_id}")
    return web.json_response(found)


def _fleet(context: Context) -> Fleet:
    if context.fleet is None:
        raise web.HTTPNotFound(reason="fleet mode is off (no fleet: section in the config)")
    return context.fleet


async def _fleet_status(request: web.Request) -> web.Response:
    return web.json_response(await _fleet(request.app[_CONTEXT]).status())


async def _fleet_resume(request: web.Request) -> web.Response:
    fleet = _fleet(request.app[_CONTEXT])
    try:
        resumed = await fleet.resume(request[_WHO])
    except errors.FleetError as exc:
        return problem(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
    if not resumed:
        return problem(HTTPStatus.CONFLICT, "the fleet group is not halted")
    return web.json_response({"resumed": True, "message": "the fleet group may switch again"})


async def _fleet_waves(request: web.Request) -> web.Response:
    fleet = _fleet(request.app[_CONTEXT])
    try:
        started = await fleet.approve_waves(request[_WHO])
    except errors.FleetError as exc:
        return problem(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
    if not started:
        return problem(HTTPStatus.CONFLICT, "the fleet group has no proposed rollout")
    return web.json_response({"started": started})


def build_app(
    settings: config.ListenSettings,
    recorder: telemetry.Recorder,
    *,
    operators: Sequence[credentials.Identity],
    status: Status,
    readiness: Readiness,
    orders: Orders | None = None,
    alertmanager_token: str | None = None,
    channels: Sequence[channel.Channel] = (),
    clock: Callable[[], float] = time.time,
    fleet: Fleet | None = None,
) -> web.Application:
    """The routes and their guards; ``serve`` binds them, tests may too."""
    app = web.Application(middlewares=[_bounded, _authorized], client_max_size=settings.body_limit)
    context = Context(
        settings,
        recorder,
        tuple(operators),
        status,
        readiness,
        logs.Tally("requests refused", log=log.warning),
        orders=orders,
        alertmanager_token=alertmanager_token or "",
        channels=tuple(channels),
        clock=clock,
        fleet=fleet,
    )
    app[_CONTEXT] = context
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_post("/alertmanager", _alertmanager)
    for inbound in context.channels:
        if (
            inbound.path in OPEN_PATHS
            or inbound.path.startswith("/api/")
            or not (inbound.path.startswith("/") and inbound.path != "/alertmanager")
        ):
            raise ValueError(f"approval channel {inbound.name}: path {inbound.path!r} is taken")
        app.router.add_post(inbound.path, _clicks(inbound))
    app.router.add_get("/api/v1/status", _status)
    app.router.add_get("/api/v1/incidents/{incident}", _incident)
    app.router.add_post("/api/v1/rollback", _rollback)
    app.router.add_post("/api/v1/approvals/{approval}", _vote)
    app.router.add_get("/api/v1/fleet", _fleet_status)
    app.router.add_post("/api/v1/fleet/resume", _fleet_resume)
    app.router.add_post("/api/v1/fleet/waves/approve", _fleet_waves)
    app.router.add_post("/api/v1/fleet/approvals/{incident}", _fleet_vote)

    async def drain(app: web.Application) -> None:  # work accepted before shutdown finishes
        if context.pending:
            await asyncio.wait(list(context.pending), timeout=settings.request_timeout)

    async def tally(app: web.Application) -> Any:  # refusals: one line per interval at most
        async def flush() -> None:
            while True:
                await asyncio.sleep(REFUSALS_EVERY)
                context.refusals.flush()

        task = asyncio.get_running_loop().create_task(flush())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        context.refusals.flush()

    app.on_shutdown.append(drain)
    app.cleanup_ctx.append(tally)
    return app


class _QuietHandler(RequestHandler):
    """aiohttp's protocol, but a request it cannot parse gets a fixed 400 body: aiohttp's own
    body quotes the raw line back, and with it a token, to whatever proxy logs answers."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        if isinstance(exc, HttpProcessingError):
            message = "the request could not be parsed (nothing of it is repeated here)"
        return super().handle_error(request, status, exc, message)


class _QuietServer(web.Server):
    """Makes each connection's protocol a ``_QuietHandler``."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = _QuietHandler  # same slots: only handle_error differs
        return handler


class _Runner(web.AppRunner):
    """The app's runner, with ``_QuietServer`` for its connections."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _QuietServer  # a subclass that adds no state
        return server


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, for this listener: a request it cannot even parse (a control
    byte in a header, a broken request line) is a refusal like any other -- counted, never
    logged with its message, which quotes the raw header and so maybe a token. Anything else
    goes on to the log (redacted there like every line)."""

    def __init__(self, context: Context) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._context = context

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            code = exc.code if isinstance(exc.code, int) and exc.code >= 400 else 400
            self._context.recorder.refused.labels("(unparsed request)", str(code)).inc()
            why = f"aiohttp could not parse it ({type(exc).__name__})"
            self._context.refusals.add(f"(unparsed request) {code}: {why}")
            return
        super().log(level, msg, *args, **kwargs)


@dataclass
class Server:
    """A bound listener; ``port`` is the real one (``listen.port: 0`` picks a free port)."""

    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.runner.cleanup()


async def serve(
    settings: config.ListenSettings,
    recorder: telemetry.Recorder,
    *,
    operators: Sequence[credentials.Identity],
    status: Status,
    readiness: Readiness,
    orders: Orders | None = None,
    alertmanager_token: str | None = None,
    channels: Sequence[channel.Channel] = (),
    fleet: Fleet | None = None,
) -> Server:
    """Bind and start serving; ``InputError`` if the address cannot be bound."""
    app = build_app(
        settings,
        recorder,
        operators=operators,
        status=status,
        readiness=readiness,
        orders=orders,
        alertmanager_token=alertmanager_token,
        channels=channels,
        fleet=fleet,
    )
    runner = _Runner(
        app,
        access_log=None,
        keepalive_timeout=settings.request_timeout,
        auto_decompress=False,  # no sender compresses; a compressed body is just not JSON
        logger=cast(logging.Logger, _ProtocolLog(app[_CONTEXT])),
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        where = f"{settings.host}:{settings.port}"
        raise errors.InputError(f"cannot listen on {where}: {exc.strerror}") from None
    except BaseException:
        await runner.cleanup()
        raise
    sockets = runner.addresses
    port = int(sockets[0][1]) if sockets else settings.port
    return Server(runner=runner, port=port)
