"""Prometheus as a source: instant queries for the loop, range queries for backtest.

Built on prometheus-api-client (synchronous ``requests``), so every call runs in a worker thread
to keep the event loop free. Each query has a timeout (sent to Prometheus too, so it gives up on
its side) and bounded, jittered retries with tenacity -- but only for failures that can heal:
connection errors, timeouts and 5xx. A 4xx (a PromQL error) is final at once and is reported
with the rule's name. Nothing here raises for a failed query: it becomes ``QueryResult.error``,
because Prometheus being down is no evidence that the service is.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import functools
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from urllib3.util.retry import Retry

from watchdog import config, credentials, errors, model

MAX_POINTS_PER_QUERY = 11000
"""Prometheus refuses range queries of more than 11,000 points per series; we chunk below it."""

_STATUS = re.compile(r"HTTP Status Code (\d+) \((.*)\)\s*$", re.S)


QUERY_THREADS = 8  # queries in flight at once; more wait their turn


QueryFailed = errors.QueryFailed


@dataclass(frozen=True, slots=True)
class RangeSeries:
    """One series of a range query: its labels and values by evaluation timestamp."""

    labels: model.Labels
    values: Mapping[float, float]


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The answer to one range query: its series, or why there is none."""

    series: tuple[RangeSeries, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What to send Prometheus; read once from files or the environment, never logged."""

    headers: dict[str, str]
    basic: tuple[str, str] | None

    def __repr__(self) -> str:  # keep secrets out of any accidental log line
        return "Credentials(<redacted>)"


def read_credentials(
    settings: config.PrometheusSettings, *, environ: Mapping[str, str] | None = None
) -> Credentials:
    """Read the bearer token or basic-auth password named by the settings."""
    env = os.environ if environ is None else environ
    headers: dict[str, str] = {}
    basic: tuple[str, str] | None = None
    token = credentials.read_secret(
        settings.bearer_token_file,
        settings.bearer_token_env,
        "Prometheus bearer token",
        environ=env,
    )
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if settings.basic_auth is not None:
        auth = settings.basic_auth
        password = credentials.read_secret(
            auth.password_file, auth.password_env, "Prometheus basic-auth password", environ=env
        )
        basic = (auth.username, password or "")
    return Credentials(headers=headers, basic=basic)


class PrometheusSource:
    """Queries one Prometheus; counts its HTTP requests (for the benchmark)."""

    def __init__(
        self,
        settings: config.PrometheusSettings,
        *,
        credentials: Credentials | None = None,
        connect: Callable[..., Any] = PrometheusConnect,  # injected in tests
    ) -> None:
        self._settings = settings
        # its own threads: a Prometheus that hangs must not take the ones the journal and the
        # heartbeat run in (the default pool has CPUs + 4), or systemd's watchdog kills us
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=QUERY_THREADS, thread_name_prefix="prometheus"
        )
        creds = credentials if credentials is not None else read_credentials(settings)
        session = requests.Session()
        tls = settings.tls
        session.verify = (
            False if tls.insecure_skip_verify else (str(tls.ca_file) if tls.ca_file else True)
        )
        if tls.insecure_skip_verify:  # asked for explicitly: say it once in config, not per query
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        if tls.cert_file is not None and tls.key_file is not None:
            session.cert = (str(tls.cert_file), str(tls.key_file))
        self._client = connect(
            url=settings.url,
            headers=creds.headers or None,
            auth=creds.basic,
            session=session,
            # Retries are ours (bounded, jittered, only for what can heal), not urllib3's.
            retry=Retry(total=0, status_forcelist=(), raise_on_status=False),
            timeout=settings.timeout,
        )
        self.requests = 0

    @property
    def url(self) -> str:
        return self._settings.url

    answers_rules = True  # base.Source

    async def observe(
        self, target: config.TargetSettings, rules: Sequence[model.Rule], at: float
    ) -> model.Observation:
        """Every query of ``target``'s rules at ``at`` (``base.Source``)."""
        return await observe(self, target, rules, at)

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            close()
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def instant(self, query: str, at: float) -> model.QueryResult:
        """One instant query at ``at``; failures come back as ``QueryResult.error``."""
        params = {"time": _format_time(at), "timeout": f"{self._settings.timeout:g}"}
        try:
            raw = await self._call(self._client.custom_query, query=query, params=params)
            return model.QueryResult(points=_points(raw))
        except QueryFailed as exc:
            return model.QueryResult(error=str(exc))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return model.QueryResult(error=_not_a_vector(self.url, exc))

    async def range(self, query: str, start: float, end: float, step: float) -> RangeResult:
        """A range query over ``[start, end]``, chunked under Prometheus's point limit."""
        series: dict[model.Labels, dict[float, float]] = {}
        span = step * (MAX_POINTS_PER_QUERY - 1)
        chunk_start = start
        while chunk_start <= end:
            chunk_end = min(end, chunk_start + span)
            try:
                raw = await self._call(
                    self._client.custom_query_range,
                    query=query,
                    start_time=datetime.fromtimestamp(chunk_start, tz=UTC),
                    end_time=datetime.fromtimestamp(chunk_end, tz=UTC),
                    step=repr(float(step)),  # plain seconds: Prometheus rejects "1.5s"
                    params={"timeout": f"{self._settings.timeout:g}"},
                )
            except QueryFailed as exc:
                return RangeResult(error=str(exc))
            try:
                for item in raw:
                    labels = _labels(item["metric"])
                    values = series.setdefault(labels, {})
                    for ts, value in item["values"]:
                        values[float(ts)] = float(value)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                return RangeResult(error=_not_a_vector(self.url, exc))
            chunk_start = chunk_end + step
        return RangeResult(
            series=tuple(RangeSeries(labels, values) for labels, values in series.items())
        )

    async def ready(self) -> str | None:
        """None when Prometheus answers a trivial query, else why not."""
        result = await self.instant("vector(1)", datetime.now(tz=UTC).timestamp())
        return result.error

    async def _call(self, function: Callable[..., Any], **kwargs: Any) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._settings.retries),
            wait=wait_random_exponential(multiplier=0.25, max=4.0),
            retry=retry_if_exception(lambda exc: isinstance(exc, QueryFailed) and exc.retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    self.requests += 1
                    loop = asyncio.get_running_loop()
                    return await loop.run_in_executor(
                        self._threads, functools.partial(self._once, function, kwargs)
                    )
        except RetryError as exc:  # pragma: no cover - reraise=True makes this unreachable
            raise QueryFailed(str(exc), retryable=False) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        try:
            return function(**kwargs)
        except PrometheusApiClientException as exc:
            raise _classify(str(exc), self._settings.url) from None
        except requests.exceptions.Timeout:
            raise QueryFailed(
                f"Prometheus at {self._settings.url} timed out after {self._settings.timeout:g}s",
                retryable=True,
            ) from None
        except requests.exceptions.SSLError as exc:  # before ConnectionError: it is one
            raise QueryFailed(
                f"TLS with Prometheus at {self._settings.url} failed: {_root_cause(exc)} "
                "(check prometheus.tls.ca_file)",
                retryable=False,
            ) from None
        except requests.exceptions.ConnectionError as exc:
            raise QueryFailed(
                f"Prometheus at {self._settings.url} is unreachable: {_root_cause(exc)}",
                retryable=True,
            ) from None
        except requests.exceptions.RequestException as exc:
            raise QueryFailed(
                f"Prometheus at {self._settings.url}: {type(exc).__name__}: {exc}",
                retryable=False,
            ) from None
        except (ValueError, KeyError, TypeError) as exc:  # a body that is not Prometheus JSON
            raise QueryFailed(
                f"Prometheus at {self._settings.url} answered something that is not its API: "
                f"{type(exc).__name__}: {exc}",
                retryable=False,
            ) from None


async def observe(
    source: PrometheusSource,
    target: config.TargetSettings,
    rules: Sequence[model.Rule],
    at: float,
    *,
    concurrency: int = 32,
) -> model.Observation:
    """Everything evaluation needs about one target at ``at``: all queries, concurrently.

    All of a target's queries normally run in one wave, so a hung Prometheus costs one
    query timeout per tick, not one per query.
    """
    limit = asyncio.Semaphore(concurrency)

    async def bounded(query: str) -> model.QueryResult:
        async with limit:
            return await source.instant(query, at)

    queries = [target.presence, target.activation, *(rule.expr for rule in rules)]
    answers = await asyncio.gather(*(bounded(q) for q in queries))
    presence, activation, *results = answers
    return model.Observation(
        at=at,
        results={rule.name: result for rule, result in zip(rules, results, strict=True)},
        presence=presence,
        activated_at=activation_time(activation),
        activation_failed=not activation.ok,
    )


def activation_time(result: model.QueryResult) -> float | None:
    """The primary's activation instant from the activation query's answer, if any."""
    values = [p.value for p in result.points if math.isfinite(p.value)]
    return max(values) if values else None


def _classify(message: str, url: str) -> QueryFailed:
    match = _STATUS.match(message)
    if match is None:
        return QueryFailed(f"Prometheus at {url}: {message}", retryable=False)
    status = int(match.group(1))
    detail = match.group(2)
    try:
        raw = ast.literal_eval(detail)  # the client puts the body's bytes repr in its message
        body = json.loads(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))
        detail = f"{body.get('errorType', 'error')}: {body.get('error', '')}"
    except (ValueError, SyntaxError, AttributeError, TypeError):
        pass
    retryable = status >= 500 or status in (408, 429)
    return QueryFailed(f"Prometheus answered HTTP {status}: {detail}", retryable=retryable)


def _not_a_vector(url: str, exc: BaseException) -> str:
    return (
        f"Prometheus at {url} answered in an unexpected shape ({type(exc).__name__}: {exc}); "
        "an alert expression must return an instant vector"
    )


def _root_cause(exc: BaseException) -> str:
    nxt = exc.__cause__ or exc.__context__
    while nxt is not None:
        exc, nxt = nxt, nxt.__cause__ or nxt.__context__
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^')\]]+)", text)
    return match.group(1) if match else text[:200]


def _points(raw: Any) -> tuple[model.Point, ...]:
    """Series of an instant vector (or a scalar); anything else raises for the caller."""
    if isinstance(raw, list) and len(raw) == 2 and not isinstance(raw[0], dict):
        return (model.Point((), float(raw[1])),)  # a scalar result
    return tuple(model.Point(_labels(item["metric"]), float(item["value"][1])) for item in raw)


def _labels(metric: Mapping[str, str]) -> model.Labels:
    return tuple(sorted((k, v) for k, v in metric.items() if k != "__name__"))


def _format_time(at: float) -> str:
    return f"{at:.3f}"
