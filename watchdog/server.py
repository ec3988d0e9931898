"""The watchdog's one HTTP listener: metrics for Prometheus, health for systemd, the operator API.

One aiohttp server on ``listen`` (loopback by default) serves every route, so there is one port
to secure and one place that turns a request into data: ``GET /metrics`` (the recorder's
registry), ``GET /healthz`` (the process answers), ``GET /readyz`` (the journal answers and every
evaluation loop ticked recently), ``GET /api/v1/status`` (the journal's view of each target, with
the operator token). Every answer is JSON except the metrics and health texts; every failure
this module answers is a 4xx naming the problem without echoing what was sent (a request line
aiohttp cannot parse gets aiohttp's own 400). Bodies are capped at ``body_limit`` (413), idle or
dripping connections are cut at ``request_timeout``, and an answer that takes longer is a 503.
The token is compared in constant time and never logged; without one configured the API answers
403, the rest still serves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import structlog
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from watchdog import config, credentials, errors, telemetry

log = structlog.get_logger("watchdog.server")

API_PREFIX: Final = "/api/"
Status = Callable[[], Awaitable[dict[str, Any]]]
"""The operator status document, built from the journal."""
Readiness = Callable[[], Awaitable[str | None]]
"""None when ready, else what is not (the journal, a stalled loop)."""


@dataclass(frozen=True)
class Context:
    """What the handlers need, given once at wiring time."""

    settings: config.ListenSettings
    recorder: telemetry.Recorder
    token: str  # "" when the operator API is off
    status: Status
    readiness: Readiness


_CONTEXT: Final = web.AppKey("context", Context)


def problem(status: int, message: str, **headers: str) -> web.Response:
    """A JSON error answer: ``{"error": <reason phrase>, "message": <what is wrong>}``."""
    return web.json_response(
        {"error": HTTPStatus(status).phrase, "message": message}, status=status, headers=headers
    )


@web.middleware
async def _bounded(request: web.Request, handler: Callable[..., Awaitable[Any]]) -> Any:
    """Errors become JSON answers; nothing is echoed back; every request has a deadline, and a
    body over the limit is refused before any handler runs (whether or not it reads it)."""
    limit = request.app[_CONTEXT].settings.body_limit
    if request.content_length is not None and request.content_length > limit:
        return problem(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {limit} bytes")
    try:
        async with asyncio.timeout(request.app[_CONTEXT].settings.request_timeout):
            return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:  # a chunked body, counted while read
        return problem(exc.status, f"the body is over {limit} bytes")
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
    """The operator API wants ``Authorization: Bearer <token>``."""
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    token = request.app[_CONTEXT].token
    if not token:
        return problem(
            HTTPStatus.FORBIDDEN,
            "the operator API is off: configure listen.token_file or listen.token_env",
        )
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.matches(presented.strip(), token):
        log.warning("unauthorized request", method=request.method, path=request.path)
        return problem(
            HTTPStatus.UNAUTHORIZED,
            "a valid bearer token is required",
            **{"WWW-Authenticate": "Bearer"},
        )
    return await handler(request)


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


def build_app(
    settings: config.ListenSettings,
    recorder: telemetry.Recorder,
    *,
    token: str | None,
    status: Status,
    readiness: Readiness,
) -> web.Application:
    """The routes and their guards; ``serve`` binds them, tests may too."""
    app = web.Application(middlewares=[_bounded, _authorized], client_max_size=settings.body_limit)
    app[_CONTEXT] = Context(settings, recorder, token or "", status, readiness)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/api/v1/status", _status)
    return app


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
    token: str | None,
    status: Status,
    readiness: Readiness,
) -> Server:
    """Bind and start serving; ``InputError`` if the address cannot be bound."""
    app = build_app(settings, recorder, token=token, status=status, readiness=readiness)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=settings.request_timeout)
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
