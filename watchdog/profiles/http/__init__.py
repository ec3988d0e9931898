"""The generic ``http`` profile: any pair of systemd units with an HTTP health endpoint.

A healthy answer is the configured status code (200 by default) and, if ``health.body`` is
set, a body that matches that regular expression. The same question is the probe, the
readiness wait and the timed endpoint of the verification, so the probes and the runbook judge
alike. Memory, CPU and the port come from ``/proc`` in the core, as for every profile. Its rules
(``rules/http-service.yml``) are templated on the target's job and units.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import httpx

from watchdog import config, model
from watchdog.profiles import base

NAME = "http"
REFUSED = frozenset({401, 403})
"""Our secret refused: that says nothing about the service's health (when we sent one)."""
UNKNOWN_PATH = frozenset({301, 302, 303, 307, 308, 404})
"""Not found, or sent elsewhere: until the path has once answered, a mistake in health.path."""
SNAPSHOT_TIMEOUT = 3.0  # seconds: a hung primary must not hold up the stop


class Http:
    """A service that answers a health endpoint over HTTP."""

    name = NAME

    def bind(self, target: config.TargetSettings, secret: str) -> HttpService:
        return HttpService(target, secret)

    def users(self, snapshot: Mapping[str, Any]) -> str | None:
        return None  # a health endpoint does not say who is connected


class HttpService:
    """One target's health endpoint."""

    def __init__(self, target: config.TargetSettings, secret: str) -> None:
        self.target = target
        self.health = target.health
        self.url = f"{target.runbook.url}{self.health.path}"
        self.headers = {self.health.header: secret} if secret else {}
        self._body = re.compile(self.health.body) if self.health.body is not None else None
        self._answered = False  # the health path has answered as expected at least once

    def probes(self) -> list[base.Probe]:
        return [base.Probe("health", self.ask)]

    async def ask(
        self, http: httpx.AsyncClient, *, within: float | None = None
    ) -> model.ProbeResult:
        """``GET <health.path>``: the expected status, and the body matching if asked;
        ``within`` seconds at most when given (else the client's own timeout)."""
        started = time.monotonic()
        limit = httpx.USE_CLIENT_DEFAULT if within is None else within
        try:
            answer = await http.get(self.url, headers=self.headers, timeout=limit)
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return model.ProbeResult("health", False, detail, time.monotonic() - started)
        seconds = time.monotonic() - started
        path, status = self.health.path, answer.status_code
        if status in REFUSED and status != self.health.status and self.headers:
            return model.ProbeResult(
                "health",
                False,
                f"{path}: HTTP {status}: the service refused the configured secret",
                seconds,
                conclusive=False,
            )
        if status in UNKNOWN_PATH and status != self.health.status and not self._answered:
            # a path that never answered is more likely our config than the release: no data
            return model.ProbeResult(
                "health",
                False,
                f"{path}: HTTP {status} and never answered as expected: check health.path",
                seconds,
                conclusive=False,
            )
        if status != self.health.status:
            return model.ProbeResult(
                "health",
                False,
                f"{path}: HTTP {answer.status_code}, {self.health.status} expected",
                seconds,
            )
        if self._body is not None and not self._body.search(answer.text):
            return model.ProbeResult(
                "health", False, f"{path}: body does not match {self.health.body!r}", seconds
            )
        self._answered = True
        return model.ProbeResult("health", True, f"{path}: HTTP {status}", seconds)

    async def preflight(self) -> base.Preflight:
        return base.Preflight()  # the units and the binary are the core's checks

    def preflight_plan(self) -> list[str]:
        return []

    async def snapshot(self, http: httpx.AsyncClient) -> base.Snapshot:
        answer = await self.ask(http, within=SNAPSHOT_TIMEOUT)
        return base.Snapshot({"health": answer.detail, "healthy": answer.ok}, answer.detail)

    async def ready(self, http: httpx.AsyncClient) -> model.ProbeResult:
        return await self.ask(http)

    async def checks(self, http: httpx.AsyncClient) -> list[model.ProbeResult]:
        return []  # readiness is the health answer itself

    async def timed(self, http: httpx.AsyncClient) -> list[model.ProbeResult]:
        return [await self.ask(http)]

    def verify_plan(self) -> list[str]:
        expected = f"HTTP {self.health.status}"
        if self.health.body is not None:
            expected += f" with a body matching {self.health.body!r}"
        timeout = self.target.runbook.verify.timeout
        return [f"{self.health.path} answers {expected} within {timeout:g}s"]
