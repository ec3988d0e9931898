"""A Lavalink v4 node simulator: one process, one real listening socket, the real protocol.

No real Lavalink can be downloaded here, yet the watchdog's probes, tests, benchmark and demo
must talk to something that answers exactly as Lavalink does: the same auth rules (401 missing,
403 wrong, empty body), the `Lavalink-Api-Version` header, the Spring error body, HTTP 200 with
`loadType: "error"` for a failed load, the WebSocket handshake and its `ready`/`stats` ops, and
the Prometheus series of `LavalinkStatsCollector`. The `java` flavour is Lavalink 4.2.2; the
`rust` flavour differs where naoNao89/Lavalink-rust differs (`/version` JSON, hard-coded REST
`frameStats`). A real client library (lavalink.py) is run against it in
``tests/lab/test_lavalink_client_fidelity.py``.

Faults, so a rollback can be provoked on purpose. All of them live in one `Faults` object; a
start flag sets each, and the control endpoint changes them while the node runs:

- crash: ``--exit-after S --exit-code N``; live ``{"crash": {"after": S, "exit_code": N}}``
  (``after`` 0 or absent: now). WebSockets are dropped without a close frame, then the
  process exits with N, as a killed JVM does.
- latency: ``--latency S`` delays every REST answer (not ``/metrics``, not the WebSocket);
  live, ``latency_share`` (0-1, default 1) delays only that share of them, drawn at random:
  a latency tail.
- a source failing: ``--fail-sources youtube,... --error-severity common|suspicious|fault``:
  HTTP 200 with ``loadType: "error"``, as Lavalink reports a broken source.
- 5xx: ``--fail-endpoints /v4/info,... --fail-status 500..599``: Spring's error body, after
  the authorization check (a 401/403 still wins: the interceptor runs first). ``/metrics`` may
  be one of them: the scrape then fails anonymously (Prometheus: ``up == 0`` for the job).
- WebSocket refusal: ``--refuse-websocket``: after the handshake interceptor's checks (401,
  400 still win) the upgrade fails with HTTP 500 and the Spring error body, as a
  `HandshakeFailureException` out of Spring's WebSocket handler does; 502/503 would come from a
  proxy in front, not from Lavalink. Open sockets stay open.
- memory growth: ``--memory-growth BYTES_PER_SECOND`` (``64M`` = 64 MiB), up to a resident-set
  cap ``--memory-cap BYTES`` (3G): real, touched pages every 0.5 s, so ``process_resident_
  memory_bytes``, ``/v4/stats`` ``memory`` and ``lavalink_memory_*`` (RSS stands in for the
  heap, up to -Xmx1G) all rise, as a leaking node's do.

Control endpoint (not a Lavalink route; same ``Authorization`` password, 401 missing, 403
wrong; never delayed or failed by the injected faults, so a test can always clear them):

- ``GET /sim/faults``: 200, the faults as JSON: ``failing_sources`` (list), ``error_severity``,
  ``latency``, ``latency_share``, ``fail_endpoints`` (list), ``fail_status``, ``refuse_websocket``,
  ``memory_growth``, ``memory_cap``, ``crash`` (null or ``{"after": seconds left,
  "exit_code"}``), and the read-only ``memory_grown_bytes``.
- ``POST /sim/faults`` with a JSON object: a partial update with those keys (``crash: null``
  cancels a pending crash, one from ``--exit-after`` included); ``"clear": true`` first resets
  every fault to healthy (``memory_cap`` kept, grown memory released, pending crash
  cancelled). 200 with the new document. Bad input: 400, a Spring-style body whose ``field``
  names the bad key, and nothing changes (the whole body is validated before any of it
  applies; unknown keys are rejected). Flags and the endpoint share the same checks.

Run: ``python -m watchdog_lab.lavalink --port 2333 --flavour java``; import: `build_app`,
`serve`, `SimOptions`. Facts are from Lavalink v4's documented REST and WebSocket protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import enum
import hashlib
import json
import logging
import math
import os
import random
import re
import secrets
import signal
import string
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

JsonObject = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class Flavour(enum.StrEnum):
    JAVA = "java"
    RUST = "rust"


class Severity(enum.StrEnum):
    """Lavalink's exception severities (lower case since v4)."""

    COMMON = "common"
    SUSPICIOUS = "suspicious"
    FAULT = "fault"


API_VERSION_HEADER: Final = "Lavalink-Api-Version"
METRICS_PATH: Final = "/metrics"
WEBSOCKET_PATH: Final = "/v4/websocket"
CONTROL_PATH: Final = "/sim/faults"  # the simulator's own; Lavalink has no such route
# What `fail_endpoints` may name: every route but the WebSocket (`refuse_websocket`) and control.
FAILABLE_PATHS: Final = ("/version", "/v4/info", "/v4/stats", "/v4/loadtracks", METRICS_PATH)
DEFAULT_STATS_INTERVAL: Final = 60.0  # StatsTask: every minute per session

JAVA_VERSION: Final = "4.2.2"
RUST_VERSION: Final = "4.0.0"  # CARGO_PKG_VERSION of lavalink-rust
SOURCE_MANAGERS: Final = ("youtube", "soundcloud", "bandcamp", "twitch", "vimeo", "nico", "http")
FILTERS: Final = (
    "volume",
    "equalizer",
    "karaoke",
    "timescale",
    "tremolo",
    "vibrato",
    "distortion",
    "rotation",
    "channelMix",
    "lowPass",
)
BUILD_TIME_MS: Final = 1_775_900_000_000
# src/server/stats.rs returns these on every REST call (marked TODO upstream).
RUST_FRAME_STATS: Final = {"sent": 1000, "nulled": 5, "deficit": 2}

# The JVM heap stands in for `Runtime` memory: -Xmx1G as in the rollback unit's ExecStart.
HEAP_MAX_BYTES: Final = 1 << 30
HEAP_MIN_COMMITTED_BYTES: Final = 128 << 20
HEAP_COMMIT_STEP_BYTES: Final = 32 << 20
CPU_REFRESH_SECONDS: Final = 30.0  # CPU_STATS_REFRESH_INTERVAL_MS since v4.1.0

DEFAULT_MEMORY_CAP_BYTES: Final = 3 << 30  # well past -Xmx1G and the units' MemoryMax=1G/2G
MEMORY_GROWTH_TICK_SECONDS: Final = 0.5
DEFAULT_EXIT_CODE: Final = 1
DEFAULT_FAIL_STATUS: Final = 500

LOGBACK_LEVELS: Final = ("trace", "debug", "info", "warn", "error")
SEARCH_RESULT_COUNT: Final = 5
SESSION_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
SESSION_ID_LENGTH: Final = 16

log = logging.getLogger("watchdog_lab.lavalink")


@dataclass(frozen=True)
class SimOptions:
    """Everything one simulated node is started with (the CLI flags, one to one)."""

    port: int = 2333
    host: str = "127.0.0.1"
    password: str = "youshallnotpass"  # noqa: S105 - Lavalink's documented default
    flavour: Flavour = Flavour.JAVA
    startup_delay: float = 0.0
    failing_sources: frozenset[str] = frozenset()
    error_severity: Severity = Severity.COMMON
    latency: float = 0.0
    exit_after: float | None = None
    exit_code: int = DEFAULT_EXIT_CODE
    fail_at_start: bool = False
    stats_interval: float = DEFAULT_STATS_INTERVAL
    fail_endpoints: frozenset[str] = frozenset()
    fail_status: int = DEFAULT_FAIL_STATUS
    refuse_websocket: bool = False
    memory_growth: int = 0  # bytes per second
    memory_cap: int = DEFAULT_MEMORY_CAP_BYTES  # resident set size the growth stops at


class SimulatedStartupFailure(RuntimeError):
    """`--fail-at-start`: the node never binds its port (a fallback that cannot start)."""


class SimulatedCrash(RuntimeError):
    """`--exit-after` or a crash order: the node died; the process must exit with `exit_code`."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"simulated crash, exit code {exit_code}")
        self.exit_code = exit_code


# --- Process facts: the real numbers of this process -------------------------------------------


def _process_start_time() -> float:
    """When this process started, to the clock tick: uptime counts from here, as Lavalink's does
    from `Launcher.startTime`. (`process_start_time_seconds` rounds to /proc/stat's whole-second
    boot time, so it may read up to a second earlier.)"""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            start_ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22, starttime
        with open("/proc/uptime", encoding="ascii") as uptime:
            since_boot = float(uptime.read().split()[0])
    except (OSError, IndexError, ValueError):
        return time.time()  # no /proc: this module is imported at process start anyway
    return time.time() - max(0.0, since_boot - start_ticks / os.sysconf("SC_CLK_TCK"))


def _resident_memory_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _available_cores() -> int:
    """What `Runtime.availableProcessors()` sees: the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _system_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user/nice
    return total - idle, total


def _process_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _fraction(value: float) -> float:
    """Lavalink clamps both loads to 0..1."""
    if not math.isfinite(value):
        return 0.0
    return min(1.0, max(0.0, value))


@dataclass(frozen=True)
class CpuLoad:
    cores: int
    system_load: float
    lavalink_load: float


class CpuSampler:
    """Lavalink's CPU figures: refreshed at most every 30 s, and 0 until the first refresh."""

    def __init__(self) -> None:
        self._cores = _available_cores()
        self._sampled_at = time.monotonic()
        self._process_seconds = _process_cpu_seconds()
        self._system_ticks = _system_cpu_ticks()
        self._load = CpuLoad(self._cores, 0.0, 0.0)

    def read(self) -> CpuLoad:
        now = time.monotonic()
        wall = now - self._sampled_at
        if wall < CPU_REFRESH_SECONDS:
            return self._load
        process_seconds = _process_cpu_seconds()
        system_ticks = _system_cpu_ticks()
        system_load = 0.0
        if system_ticks is not None and self._system_ticks is not None:
            busy = system_ticks[0] - self._system_ticks[0]
            total = system_ticks[1] - self._system_ticks[1]
            system_load = busy / total if total > 0 else 0.0
        lavalink_load = (process_seconds - self._process_seconds) / wall / self._cores
        self._load = CpuLoad(self._cores, _fraction(system_load), _fraction(lavalink_load))
        self._sampled_at, self._process_seconds, self._system_ticks = (
            now,
            process_seconds,
            system_ticks,
        )
        return self._load


@dataclass(frozen=True)
class HeapUsage:
    """`Runtime` memory: free + used == allocated <= reservable, as the JVM reports it."""

    free: int
    used: int
    allocated: int
    reservable: int

    @classmethod
    def from_resident_memory(cls, resident_bytes: int) -> HeapUsage:
        # The real RSS plays the live heap, so real memory growth shows in /v4/stats too.
        used = min(resident_bytes, HEAP_MAX_BYTES)
        committed = math.ceil(used * 1.5 / HEAP_COMMIT_STEP_BYTES) * HEAP_COMMIT_STEP_BYTES
        allocated = min(HEAP_MAX_BYTES, max(HEAP_MIN_COMMITTED_BYTES, committed))
        return cls(allocated - used, used, allocated, HEAP_MAX_BYTES)


@dataclass(frozen=True)
class NodeStats:
    players: int
    playing_players: int
    uptime_ms: int
    memory: HeapUsage
    cpu: CpuLoad
    frame_stats: dict[str, int] | None

    def to_json(self) -> JsonObject:
        document: JsonObject = {
            "players": self.players,
            "playingPlayers": self.playing_players,
            "uptime": self.uptime_ms,
            "memory": {
                "free": self.memory.free,
                "used": self.memory.used,
                "allocated": self.memory.allocated,
                "reservable": self.memory.reservable,
            },
            "cpu": {
                "cores": self.cpu.cores,
                "systemLoad": self.cpu.system_load,
                "lavalinkLoad": self.cpu.lavalink_load,
            },
        }
        if self.frame_stats is not None:  # encodeDefaults=false: a null frameStats is left out
            document["frameStats"] = dict(self.frame_stats)
        return document


# --- Faults: one model, one set of checks for the flags and the control endpoint ---------------


class InvalidFault(ValueError):
    """One fault setting is unusable; `field` names it as the control endpoint spells it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# The checks take a JSON value (or what a flag's text was converted to) and return the typed
# value, or raise ValueError saying what is wrong with it.


def _finite_number(value: object) -> float:
    # bool is an int to Python, never a number to a caller.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"must be a number, got {value!r}")
    return float(value)


def check_seconds(value: object) -> float:
    seconds = _finite_number(value)
    if seconds < 0:
        raise ValueError(f"must be a number of seconds >= 0, got {value!r}")
    return seconds


def check_share(value: object) -> float:
    share = _finite_number(value)
    if not 0 < share <= 1:
        raise ValueError(f"must be a share in (0, 1], got {value!r}")
    return share


def check_exit_code(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError(f"must be an exit code 0..255, got {value!r}")
    return value


def check_flag(value: object) -> bool:
    if not isinstance(value, bool):  # a JSON value of the wrong type is a bad value
        raise ValueError(f"must be true or false, got {value!r}")  # noqa: TRY004
    return value


def _names(value: object, *, known: Sequence[str], what: str) -> frozenset[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"must be a list of {what}s, got {value!r}")
    names = frozenset(name.strip() for name in value if name.strip())
    unknown = sorted(names - set(known))
    if unknown:
        raise ValueError(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def check_failing_sources(value: object) -> frozenset[str]:
    return _names(value, known=SOURCE_MANAGERS, what="source")


def check_severity(value: object) -> Severity:
    if isinstance(value, str) and value in Severity.__members__.values():
        return Severity(value)
    raise ValueError(f"must be one of {', '.join(Severity)}, got {value!r}")


def check_fail_endpoints(value: object) -> frozenset[str]:
    # The WebSocket fails with `refuse_websocket`; the control endpoint must stay usable.
    return _names(value, known=FAILABLE_PATHS, what="path")


def check_fail_status(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 500 <= value <= 599:
        raise ValueError(f"must be an HTTP status 500..599, got {value!r}")
    return value


_BYTE_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def check_byte_count(value: object) -> int:
    """Bytes: a whole number >= 0, or text such as ``64M`` (binary multiples, as systemd's
    ``MemoryMax=`` reads them)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)\s*", value, flags=re.IGNORECASE)
        if match is None:
            raise ValueError(f"must be a number of bytes like 50000000 or 64M, got {value!r}")
        return int(match[1]) * _BYTE_UNITS[match[2].upper()]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a number of bytes >= 0, got {value!r}")
    return value


def _checked(field_name: str, check: Callable[[object], T], value: object) -> T:
    try:
        return check(value)
    except ValueError as problem:
        raise InvalidFault(field_name, str(problem)) from None


@dataclass(frozen=True)
class CrashOrder:
    """A crash to come: at `at` (a `time.monotonic()` instant) the process exits `exit_code`."""

    at: float
    exit_code: int = DEFAULT_EXIT_CODE


@dataclass
class Faults:
    """What is broken right now; flags set it at start, the control endpoint changes it."""

    failing_sources: set[str] = field(default_factory=set)
    error_severity: Severity = Severity.COMMON
    latency: float = 0.0
    latency_share: float = 1.0  # the share of answers the latency delays
    fail_endpoints: set[str] = field(default_factory=set)
    fail_status: int = DEFAULT_FAIL_STATUS
    refuse_websocket: bool = False
    memory_growth: int = 0  # bytes per second
    memory_cap: int = DEFAULT_MEMORY_CAP_BYTES  # a safety limit, not a fault: `clear` keeps it
    crash: CrashOrder | None = None

    @classmethod
    def from_options(cls, options: SimOptions, *, started: float) -> Faults:
        """The faults the flags ask for; `started` (monotonic) is when `--exit-after` counts."""
        crash = None
        if options.exit_after is not None:
            crash = CrashOrder(started + options.exit_after, options.exit_code)
        return cls(
            failing_sources=set(options.failing_sources),
            error_severity=options.error_severity,
            latency=options.latency,
            fail_endpoints=set(options.fail_endpoints),
            fail_status=options.fail_status,
            refuse_websocket=options.refuse_websocket,
            memory_growth=options.memory_growth,
            memory_cap=options.memory_cap,
            crash=crash,
        )

    def to_json(self, *, now: float) -> JsonObject:
        crash = None
        if self.crash is not None:
            seconds_left = round(max(0.0, self.crash.at - now), 3)
            crash = {"after": seconds_left, "exit_code": self.crash.exit_code}
        return {
            "failing_sources": sorted(self.failing_sources),
            "error_severity": str(self.error_severity),
            "latency": self.latency,
            "latency_share": self.latency_share,
            "fail_endpoints": sorted(self.fail_endpoints),
            "fail_status": self.fail_status,
            "refuse_websocket": self.refuse_websocket,
            "memory_growth": self.memory_growth,
            "memory_cap": self.memory_cap,
            "crash": crash,
        }

    def apply(self, update: FaultUpdate) -> None:
        """Change these faults in place (holders of this object see the change at once)."""
        if update.clear:
            healthy = Faults(memory_cap=self.memory_cap)
            for setting in fields(self):
                setattr(self, setting.name, getattr(healthy, setting.name))
        for name, value in update.changes.items():
            setattr(self, name, value)


@dataclass(frozen=True)
class FaultUpdate:
    """A validated `POST /sim/faults` body: reset first if `clear`, then set `changes`."""

    clear: bool
    changes: Mapping[str, Any]


# Each settable key of the control endpoint, and how its JSON value becomes a `Faults` value.
_FAULT_SETTINGS: Final[dict[str, Callable[[object], object]]] = {
    "failing_sources": lambda value: set(check_failing_sources(value)),
    "error_severity": check_severity,
    "latency": check_seconds,
    "latency_share": check_share,
    "fail_endpoints": lambda value: set(check_fail_endpoints(value)),
    "fail_status": check_fail_status,
    "refuse_websocket": check_flag,
    "memory_growth": check_byte_count,
    "memory_cap": check_byte_count,
}
_CRASH_KEYS: Final = ("after", "exit_code")
READ_ONLY_KEYS: Final = ("memory_grown_bytes",)


def _crash_order(value: object, *, now: float) -> CrashOrder | None:
    if value is None:
        return None  # cancels a pending crash
    if not isinstance(value, dict):
        raise InvalidFault(
            "crash", f'must be an object like {{"after": 2, "exit_code": 3}} or null, got {value!r}'
        )
    for key in value:
        if key not in _CRASH_KEYS:
            raise InvalidFault(f"crash.{key}", f"unknown field; known: {', '.join(_CRASH_KEYS)}")
    after = _checked("crash.after", check_seconds, value.get("after", 0.0))
    exit_code = _checked(
        "crash.exit_code", check_exit_code, value.get("exit_code", DEFAULT_EXIT_CODE)
    )
    return CrashOrder(now + after, exit_code)


def parse_fault_update(document: object, *, now: float) -> FaultUpdate:
    """Validate a whole `POST /sim/faults` body (raising `InvalidFault`) before any of it
    applies, so a bad body changes nothing."""
    if not isinstance(document, dict):
        raise InvalidFault("body", f"must be a JSON object, got {document!r}")
    known = [*_FAULT_SETTINGS, "crash", "clear"]
    for key in document:
        if key in READ_ONLY_KEYS:
            raise InvalidFault(key, "is read-only")
        if key not in known:
            raise InvalidFault(key, f"unknown field; known: {', '.join(known)}")
    changes: dict[str, Any] = {
        key: _checked(key, check, document[key])
        for key, check in _FAULT_SETTINGS.items()
        if key in document
    }
    if "crash" in document:
        changes["crash"] = _crash_order(document["crash"], now=now)
    clear = _checked("clear", check_flag, document.get("clear", False))
    return FaultUpdate(clear=clear, changes=changes)


class MemoryBallast:
    """Memory a leaking node holds: real bytes, every page written, so the RSS truly grows
    (zero-filled allocations map the zero page and would not count as resident)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.size = 0

    def grow(self, amount: int) -> None:
        if amount > 0:
            self._chunks.append(b"\x01" * amount)
            self.size += amount

    def release(self) -> None:
        self._chunks.clear()
        self.size = 0


# --- Node state --------------------------------------------------------------------------------


class NodeLog:
    """Lavalink's log statements, counted by level as logback's InstrumentedAppender counts them
    (`logback_appender_total{level}`), so errors a node logs are visible on /metrics."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(LOGBACK_LEVELS, 0)

    def info(self, logger_name: str, message: str) -> None:
        self._emit(logging.INFO, "info", logger_name, message)

    def warn(self, logger_name: str, message: str) -> None:
        self._emit(logging.WARNING, "warn", logger_name, message)

    def error(self, logger_name: str, message: str) -> None:
        self._emit(logging.ERROR, "error", logger_name, message)

    def _emit(self, level: int, level_name: str, logger_name: str, message: str) -> None:
        self.counts[level_name] += 1
        logging.getLogger(logger_name).log(level, message)


@dataclass
class ClientSession:
    session_id: str
    user_id: int
    client_name: str | None
    socket: web.WebSocketResponse
    request: web.BaseRequest


@dataclass
class NodeState:
    """The mutable side of one node: sessions, players, faults, counters."""

    options: SimOptions
    faults: Faults
    log: NodeLog = field(default_factory=NodeLog)
    cpu: CpuSampler = field(default_factory=CpuSampler)
    process_start: float = field(default_factory=_process_start_time)
    sessions: dict[str, ClientSession] = field(default_factory=dict)
    players: int = 0
    playing_players: int = 0
    ballast: MemoryBallast = field(default_factory=MemoryBallast)
    # Set on every control update, so `serve` re-reads `faults.crash` (ordered or cancelled).
    crash_ordered: asyncio.Event = field(default_factory=asyncio.Event)

    def stats(self) -> NodeStats:
        frame_stats = RUST_FRAME_STATS if self.options.flavour is Flavour.RUST else None
        return NodeStats(
            players=self.players,
            playing_players=self.playing_players,
            uptime_ms=max(0, int((time.time() - self.process_start) * 1000)),
            memory=HeapUsage.from_resident_memory(_resident_memory_bytes()),
            cpu=self.cpu.read(),
            # Java: frameStats only once a playing player has a minute of data; none play here.
            frame_stats=frame_stats,
        )

    def new_session_id(self) -> str:
        while True:
            candidate = "".join(
                secrets.choice(SESSION_ID_ALPHABET) for _ in range(SESSION_ID_LENGTH)
            )
            if candidate not in self.sessions:
                return candidate


OPTIONS_KEY: Final = web.AppKey("options", SimOptions)
STATE_KEY: Final = web.AppKey("state", NodeState)
REGISTRY_KEY: Final = web.AppKey("registry", CollectorRegistry)


# --- Documents: /version, /v4/info -------------------------------------------------------------


def version_text(flavour: Flavour) -> str:
    return JAVA_VERSION if flavour is Flavour.JAVA else RUST_VERSION


def rust_version_document() -> JsonObject:
    """`version_handler` of lavalink-rust: a JSON object where Lavalink answers plain text."""
    return {
        "version": RUST_VERSION,
        "buildTime": 0,
        "gitBranch": "unknown",
        "gitCommit": "unknown",
        "buildNumber": 0,
        "jvm": "N/A - Rust",
        "lavaplayer": "N/A - Native Rust",
        "sourceManagers": [
            "http",
            "youtube",
            "soundcloud",
            "bandcamp",
            "twitch",
            "vimeo",
            "nico",
            "local",
        ],
        "filters": list(FILTERS),
        "plugins": [],
    }


def info_document(flavour: Flavour) -> JsonObject:
    semver = version_text(flavour)
    major, minor, patch = (int(part) for part in semver.split("."))
    java = flavour is Flavour.JAVA
    return {
        "version": {
            "semver": semver,
            "major": major,
            "minor": minor,
            "patch": patch,
            "preRelease": None,
            "build": None,
        },
        "buildTime": BUILD_TIME_MS,
        "git": {"branch": "master", "commit": "d7d5a54", "commitTime": BUILD_TIME_MS},
        "jvm": "17.0.14" if java else "N/A - Rust",
        "lavaplayer": "2.2.6" if java else "N/A - Native Rust",
        "sourceManagers": list(SOURCE_MANAGERS),
        "filters": list(FILTERS),
        "plugins": [{"name": "youtube-plugin", "version": "1.18.2"}],
    }


# --- Track loading -----------------------------------------------------------------------------

SEARCH_PREFIXES: Final = {"ytsearch": "youtube", "ytmsearch": "youtube", "scsearch": "soundcloud"}
_YOUTUBE_HOSTS: Final = {"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com"}
_SOUNDCLOUD_HOSTS: Final = {"soundcloud.com", "www.soundcloud.com", "m.soundcloud.com"}
_TITLE_STYLES: Final = (
    "{} (Official Video)",
    "{} (Official Audio)",
    "{} - Lyrics",
    "{} (Live Session)",
    "{} [Extended Mix]",
)
_ARTISTS: Final = ("Aurora Lane", "The Harbour Sessions", "Kestrel", "Nightcall", "Velvet Static")
_PLAYLIST_NAMES: Final = ("Late Night Drive", "Focus Flow", "Indie Mornings", "Synthwave Hours")
# lavaplayer's container probe names, by file extension, for http tracks.
_HTTP_PROBES: Final = {"mp3": "mp3", "flac": "flac", "ogg": "ogg", "wav": "wav", "m4a": "mp4"}

# DefaultAudioPlayerManager: TRACK_INFO_VERSION 3 adds artworkUrl and isrc; flag 1 = versioned.
TRACK_INFO_VERSION: Final = 3
TRACK_INFO_VERSIONED_FLAG: Final = 1


def _java_utf(text: str) -> bytes:
    """`DataOutput.writeUTF`: a 2-byte length, then modified UTF-8 of the UTF-16 code units."""
    units = text.encode("utf-16-be", "surrogatepass")
    encoded = bytearray()
    for index in range(0, len(units), 2):
        unit = (units[index] << 8) | units[index + 1]
        if 0x01 <= unit <= 0x7F:
            encoded.append(unit)
        elif unit <= 0x7FF:
            encoded += bytes((0xC0 | unit >> 6, 0x80 | unit & 0x3F))
        else:
            encoded += bytes((0xE0 | unit >> 12, 0x80 | unit >> 6 & 0x3F, 0x80 | unit & 0x3F))
    return struct.pack(">H", len(encoded)) + bytes(encoded)


def _nullable_utf(text: str | None) -> bytes:
    return b"\x00" if text is None else b"\x01" + _java_utf(text)


@dataclass(frozen=True)
class TrackInfo:
    identifier: str
    author: str
    length_ms: int
    title: str
    uri: str | None
    artwork_url: str | None
    isrc: str | None
    source_name: str
    is_stream: bool = False
    is_seekable: bool = True
    position_ms: int = 0
    container_probe: str | None = None  # the http source appends its probe to the encoding

    def encoded(self) -> str:
        """The track as lavaplayer encodes it, so clients that decode `encoded` locally work."""
        body = bytes((TRACK_INFO_VERSION,))
        body += _java_utf(self.title) + _java_utf(self.author)
        body += struct.pack(">q", self.length_ms) + _java_utf(self.identifier)
        body += struct.pack(">?", self.is_stream)
        body += _nullable_utf(self.uri) + _nullable_utf(self.artwork_url)
        body += _nullable_utf(self.isrc) + _java_utf(self.source_name)
        if self.container_probe is not None:
            body += _java_utf(self.container_probe)
        body += struct.pack(">q", self.position_ms)
        header = struct.pack(">i", len(body) | TRACK_INFO_VERSIONED_FLAG << 30)
        return base64.b64encode(header + body).decode("ascii")

    def to_json(self) -> JsonObject:
        return {
            "encoded": self.encoded(),
            "info": {
                "identifier": self.identifier,
                "isSeekable": self.is_seekable,
                "author": self.author,
                "length": self.length_ms,
                "isStream": self.is_stream,
                "position": self.position_ms,
                "title": self.title,
                "uri": self.uri,
                "artworkUrl": self.artwork_url,
                "isrc": self.isrc,
                "sourceName": self.source_name,
            },
            "pluginInfo": {},
            "userData": {},
        }


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode()).digest()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "track"


def _youtube_track(video_id: str, title: str, author: str, *, music: bool = False) -> TrackInfo:
    host = "music.youtube.com" if music else "www.youtube.com"
    return TrackInfo(
        identifier=video_id,
        author=author,
        length_ms=90_000 + int.from_bytes(_digest(video_id)[:2]) % 300 * 1000,
        title=title,
        uri=f"https://{host}/watch?v={video_id}",
        artwork_url=f"https://i.ytimg.com/vi/{video_id}/mqdefault.jpg",
        isrc=None,
        source_name="youtube",
    )


def _youtube_id(*seed: str) -> str:
    return base64.urlsafe_b64encode(_digest(*seed)).decode("ascii")[:11]


def _soundcloud_track(author: str, title: str) -> TrackInfo:
    digest = _digest("soundcloud", author, title)
    track_number = int.from_bytes(digest[:4])
    return TrackInfo(
        identifier=(
            f"O:https://api-v2.soundcloud.com/media/soundcloud:tracks:{track_number}"
            f"/{digest[4:20].hex()}/stream/progressive"
        ),
        author=author,
        length_ms=90_000 + int.from_bytes(digest[20:22]) % 300 * 1000,
        title=title,
        uri=f"https://soundcloud.com/{_slug(author)}/{_slug(title)}",
        artwork_url=f"https://i1.sndcdn.com/artworks-{digest[22:28].hex()}-0-original.jpg",
        isrc=None,
        source_name="soundcloud",
    )


def _search_results(source: str, query: str, *, music: bool) -> list[TrackInfo]:
    results = []
    for rank in range(SEARCH_RESULT_COUNT):
        title = _TITLE_STYLES[rank].format(query)
        artist = _ARTISTS[_digest(source, query, str(rank))[0] % len(_ARTISTS)]
        if source == "youtube":
            video_id = _youtube_id(query, str(rank))
            results.append(_youtube_track(video_id, title, artist, music=music))
        else:
            results.append(_soundcloud_track(artist, title))
    return results


def _failure(source: str, severity: Severity) -> tuple[str, str]:
    """(message, cause) as the source's loader reports them; wording after lavaplayer,
    youtube-source and Lavalink's `loading.kt` (any non-friendly throwable becomes `fault`)."""
    if severity is Severity.FAULT:
        causes = {
            "youtube": "dev.lavalink.youtube.AllClientsFailedException: All clients failed to "
            "load the item. See suppressed exceptions for details.",
            "soundcloud": "java.lang.IllegalStateException: Could not find the SoundCloud "
            "client ID",
        }
        cause = causes.get(source, "java.net.SocketTimeoutException: Read timed out")
        return "Something went wrong while looking up the track.", cause
    if severity is Severity.SUSPICIOUS:
        name = {"youtube": "YouTube", "soundcloud": "SoundCloud"}.get(source, source)
        message = f"Loading information for a {name} track failed."
        return message, "java.io.IOException: Invalid status code for response: 429"
    messages = {
        "youtube": "This video requires login.",
        "soundcloud": "This track is not available. It may be private or removed.",
    }
    message = messages.get(source, "This track is not available.")
    return message, f"com.sedmelluq.discord.lavaplayer.tools.FriendlyException: {message}"


def _java_stack_trace(head: str, frames: Sequence[str]) -> str:
    return head + "".join(f"\n\tat {frame}" for frame in frames) + "\n"


def error_load_result(source: str, severity: Severity) -> JsonObject:
    message, cause = _failure(source, severity)
    stack = _java_stack_trace(
        cause,
        (
            "com.sedmelluq.discord.lavaplayer.player.DefaultAudioPlayerManager"
            ".checkSourcesForItemOnce(DefaultAudioPlayerManager.java:443)",
            "com.sedmelluq.discord.lavaplayer.player.DefaultAudioPlayerManager"
            ".checkSourcesForItem(DefaultAudioPlayerManager.java:425)",
            "lavalink.server.util.LoadingKt.loadAudioItem(loading.kt:24)",
            "lavalink.server.player.AudioLoader.load(AudioLoader.kt:41)",
        ),
    )
    data = {"message": message, "severity": str(severity), "cause": cause, "causeStackTrace": stack}
    return {"loadType": "error", "data": data}


def _playlist(name: str, tracks: list[TrackInfo], selected: int) -> JsonObject:
    return {
        "loadType": "playlist",
        "data": {
            "info": {"name": name, "selectedTrack": selected},
            "pluginInfo": {},
            "tracks": [track.to_json() for track in tracks],
        },
    }


def _track(track: TrackInfo) -> JsonObject:
    return {"loadType": "track", "data": track.to_json()}


EMPTY_RESULT: Final[JsonObject] = {"loadType": "empty", "data": {}}


def _source_of(identifier: str) -> str | None:
    """Which source manager would claim `identifier`, or None (no manager: `empty`)."""
    prefix, separator, _ = identifier.partition(":")
    if separator and prefix in SEARCH_PREFIXES:
        return SEARCH_PREFIXES[prefix]
    parts = urlsplit(identifier)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.hostname in _YOUTUBE_HOSTS or parts.hostname == "youtu.be":
        return "youtube"
    if parts.hostname in _SOUNDCLOUD_HOSTS:
        return "soundcloud"
    return "http"


def _load_youtube_url(identifier: str) -> JsonObject:
    parts = urlsplit(identifier)
    query = parse_qs(parts.query)
    path_segments = [segment for segment in parts.path.split("/") if segment]
    if parts.hostname == "youtu.be" and path_segments:
        video_id: str | None = path_segments[0]
    elif path_segments[:1] == ["shorts"] and len(path_segments) > 1:
        video_id = path_segments[1]
    else:
        video_id = query.get("v", [None])[0]
    music = parts.hostname == "music.youtube.com"
    if "list" in query:
        list_id = query["list"][0]
        name = _PLAYLIST_NAMES[_digest(list_id)[0] % len(_PLAYLIST_NAMES)]
        tracks = [
            _youtube_track(_youtube_id(list_id, str(index)), f"{name} #{index + 1}", artist)
            for index, artist in enumerate(_ARTISTS)
        ]
        selected = -1
        if video_id is not None:
            tracks[0] = _youtube_track(video_id, f"{name} #1", _ARTISTS[0], music=music)
            selected = 0
        return _playlist(name, tracks, selected)
    if not video_id:
        return EMPTY_RESULT
    artist = _ARTISTS[_digest(video_id)[0] % len(_ARTISTS)]
    return _track(_youtube_track(video_id, f"Video {video_id}", artist, music=music))


def _load_soundcloud_url(identifier: str) -> JsonObject:
    segments = [segment for segment in urlsplit(identifier).path.split("/") if segment]
    if len(segments) < 2:
        return EMPTY_RESULT
    author = segments[0].replace("-", " ").title()
    if len(segments) >= 3 and segments[1] == "sets":
        name = segments[2].replace("-", " ").title()
        tracks = [_soundcloud_track(author, f"{name} {index + 1}") for index in range(4)]
        return _playlist(name, tracks, -1)
    return _track(_soundcloud_track(author, segments[1].replace("-", " ").title()))


def _load_http_url(identifier: str) -> JsonObject:
    extension = urlsplit(identifier).path.rpartition(".")[2].lower()
    return _track(
        TrackInfo(
            identifier=identifier,
            author="Unknown artist",
            length_ms=183_000,
            title="Unknown title",
            uri=identifier,
            artwork_url=None,
            isrc=None,
            source_name="http",
            container_probe=_HTTP_PROBES.get(extension, "mp3"),
        )
    )


def load_result(identifier: str, faults: Faults) -> JsonObject:
    """What `GET /v4/loadtracks?identifier=` answers (always with HTTP 200)."""
    source = _source_of(identifier)
    if source is None:
        return EMPTY_RESULT
    if source in faults.failing_sources:
        return error_load_result(source, faults.error_severity)
    prefix, separator, query = identifier.partition(":")
    if separator and prefix in SEARCH_PREFIXES:
        if not query.strip():
            return EMPTY_RESULT
        tracks = _search_results(source, query.strip(), music=prefix == "ytmsearch")
        return {"loadType": "search", "data": [track.to_json() for track in tracks]}
    if source == "youtube":
        return _load_youtube_url(identifier)
    if source == "soundcloud":
        return _load_soundcloud_url(identifier)
    return _load_http_url(identifier)


# --- HTTP plumbing -----------------------------------------------------------------------------


def _json_response(document: Any, *, status: int = 200) -> web.Response:
    # Compact like kotlinx.serialization's output.
    text = json.dumps(document, separators=(",", ":"))
    return web.Response(text=text, status=status, content_type="application/json")


def error_response(
    request: web.Request,
    status: int,
    message: str,
    *,
    exception: str,
    headers: dict[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> web.Response:
    """Spring Boot's error body as Lavalink configures it (message always, trace on `?trace`);
    `extra` adds fields (the control endpoint's `field`)."""
    body: JsonObject = {
        "timestamp": int(time.time() * 1000),
        "status": status,
        "error": HTTPStatus(status).phrase,
    }
    trace_parameter = request.query.get("trace")
    if trace_parameter is not None and trace_parameter.lower() != "false":
        body["trace"] = _java_stack_trace(
            f"{exception}: {message}",
            (
                "org.springframework.web.servlet.DispatcherServlet.doDispatch(DispatcherServlet.java:1089)",
            ),
        )
    body["message"] = message
    body["path"] = request.path
    body.update(extra or {})
    response = _json_response(body, status=status)
    response.headers.update(headers or {})
    return response


def _authorization_failure(request: web.Request) -> int | None:
    """RequestAuthorizationFilter: 401 without the header, 403 with a wrong one."""
    authorization = request.headers.get("Authorization")
    if authorization is None:
        return HTTPStatus.UNAUTHORIZED
    if authorization != request.app[OPTIONS_KEY].password:
        return HTTPStatus.FORBIDDEN
    return None


def injected_server_error(request: web.Request, state: NodeState) -> web.Response:
    """`fail_endpoints`: what Spring answers when the handler throws. A 500 is an uncaught
    exception (logged at ERROR); another 5xx is a `ResponseStatusException` (logged at WARN)."""
    status = state.faults.fail_status
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        exception = "java.lang.RuntimeException"
        state.log.error(
            "org.apache.catalina.core.ContainerBase",
            f"Servlet.service() for servlet [dispatcherServlet] threw exception ({request.path})",
        )
    else:
        exception = "org.springframework.web.server.ResponseStatusException"
        state.log.warn(
            "org.springframework.web.servlet.mvc.support.DefaultHandlerExceptionResolver",
            f"Resolved [{exception}: {status} {HTTPStatus(status).name}] ({request.path})",
        )
    return error_response(
        request, status, "Simulated server error (fault injection)", exception=exception
    )


@web.middleware
async def _lavalink_http(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    path = request.path
    anonymous_or_socket = path in (METRICS_PATH, WEBSOCKET_PATH)
    # The control endpoint is the simulator's, not Lavalink's: no injected fault reaches it, so
    # faults can always be cleared.
    control = path == CONTROL_PATH
    faults = state.faults
    # a tail: only a share of the answers is slow (no cryptography in a fault injector)
    slow = faults.latency_share >= 1 or random.random() < faults.latency_share  # noqa: S311
    if faults.latency > 0 and not (anonymous_or_socket or control) and slow:
        await asyncio.sleep(faults.latency)
    route_error = request.match_info.http_exception
    # Spring fails the handler lookup before any interceptor runs: 405 needs no auth.
    if isinstance(route_error, web.HTTPMethodNotAllowed):
        return error_response(
            request,
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"Request method '{request.method}' is not supported",
            exception="org.springframework.web.HttpRequestMethodNotSupportedException",
            headers={"Allow": ", ".join(sorted(route_error.allowed_methods))},
        )
    if anonymous_or_socket:
        if path in state.faults.fail_endpoints:  # only /metrics can be: an anonymous failure
            return injected_server_error(request, state)
        return await handler(request)  # anonymous scrape; the handshake does its own checks
    failure = _authorization_failure(request)
    if failure is not None:
        verb = "missing" if failure == HTTPStatus.UNAUTHORIZED else "failed"
        message = f"Authorization {verb} for {request.remote} on {request.method} {path}"
        if control:
            log.warning("%s", message)  # not Lavalink's: kept out of logback_appender_total
        else:
            state.log.warn("lavalink.server.config.RequestAuthorizationFilter", message)
        return web.Response(status=failure)
    # After the interceptor, as a handler's exception would be: a 401/403 still wins.
    if path in state.faults.fail_endpoints:
        return injected_server_error(request, state)
    if route_error is not None:
        # Spring 6.1+ serves unmapped paths with the static resource handler.
        return error_response(
            request,
            HTTPStatus.NOT_FOUND,
            f"No static resource {path.lstrip('/')}.",
            exception="org.springframework.web.servlet.resource.NoResourceFoundException",
        )
    return await handler(request)


async def _add_api_version_header(request: web.Request, response: web.StreamResponse) -> None:
    # ResponseHeaderFilter: on every response, errors and the WebSocket upgrade included.
    response.headers[API_VERSION_HEADER] = "4"


# --- Handlers ----------------------------------------------------------------------------------


async def _version(request: web.Request) -> web.Response:
    flavour = request.app[OPTIONS_KEY].flavour
    if flavour is Flavour.RUST:
        return _json_response(rust_version_document())
    return web.Response(text=version_text(flavour), content_type="text/plain")


async def _info(request: web.Request) -> web.Response:
    return _json_response(info_document(request.app[OPTIONS_KEY].flavour))


async def _stats(request: web.Request) -> web.Response:
    return _json_response(request.app[STATE_KEY].stats().to_json())


async def _load_tracks(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    identifier = request.query.get("identifier")
    if identifier is None:
        return error_response(
            request,
            HTTPStatus.BAD_REQUEST,
            "Required request parameter 'identifier' for method parameter type String is not "
            "present",
            exception="org.springframework.web.bind.MissingServletRequestParameterException",
        )
    state.log.info(
        "lavalink.server.player.AudioLoaderRestHandler",
        f'Got request to load for identifier "{identifier}"',
    )
    result = load_result(identifier, state.faults)
    if result["loadType"] == "error":
        state.log.error("lavalink.server.player.AudioLoader", f"Load failed: {result['data']}")
    return _json_response(result)


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    names = request.query.getall("name[]", [])
    exposition = generate_latest(registry.restricted_registry(names) if names else registry)
    return web.Response(body=exposition, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


def _parse_user_id(header: str | None) -> int | None:
    if header is None:
        return None
    try:
        return int(header)
    except ValueError:
        return None


async def _send_stats_every(session: ClientSession, state: NodeState, interval: float) -> None:
    while not session.socket.closed:
        document = {"op": "stats", **state.stats().to_json()}
        try:
            await session.socket.send_str(json.dumps(document, separators=(",", ":")))
        except ConnectionError:
            return
        await asyncio.sleep(interval)


async def _websocket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    options = request.app[OPTIONS_KEY]
    socket_logger = "lavalink.server.io.HandshakeInterceptorImpl"
    if request.headers.get("Authorization") != options.password:
        state.log.error(socket_logger, f"Authentication failed from {request.remote}")
        return web.Response(status=HTTPStatus.UNAUTHORIZED)
    user_id_header = request.headers.get("User-Id")
    # `toLongOrNull() == 0L`: a non-numeric id passes the handshake and fails just after it.
    if not user_id_header or _parse_user_id(user_id_header) == 0:
        state.log.error(socket_logger, f"Missing User-Id header from {request.remote}")
        return web.Response(status=HTTPStatus.BAD_REQUEST)
    socket = web.WebSocketResponse(autoping=True)
    if not socket.can_prepare(request).ok:
        return web.Response(
            status=HTTPStatus.BAD_REQUEST, text='Can "Upgrade" only to "WebSocket".'
        )
    if state.faults.refuse_websocket:
        # The interceptor let it through; the upgrade itself fails. Spring's handler rethrows
        # a HandshakeFailureException and Spring Boot answers 500 with its error body.
        exception = "org.springframework.web.socket.server.HandshakeFailureException"
        failure = f"Uncaught failure for request {request.url} - simulated (refuse_websocket)"
        state.log.error("org.apache.catalina.core.ContainerBase", f"{exception}: {failure}")
        return error_response(
            request, HTTPStatus.INTERNAL_SERVER_ERROR, failure, exception=exception
        )
    socket.headers["Session-Resumed"] = "false"  # no session is ever resumable here
    state.log.info(socket_logger, f"Incoming connection from {request.remote}")
    await socket.prepare(request)

    server_logger = "lavalink.server.io.SocketServer"
    user_id = _parse_user_id(user_id_header)
    if user_id is None:  # `toLong()` throws in afterConnectionEstablished: Spring closes 1011
        state.log.error(server_logger, f"Invalid User-Id header {user_id_header!r}")
        await socket.close(code=WSCloseCode.INTERNAL_ERROR)
        return socket
    session = ClientSession(
        session_id=state.new_session_id(),
        user_id=user_id,
        client_name=request.headers.get("Client-Name"),
        socket=socket,
        request=request,
    )
    state.sessions[session.session_id] = session
    ready = {"op": "ready", "resumed": False, "sessionId": session.session_id}
    await socket.send_str(json.dumps(ready, separators=(",", ":")))
    if session.client_name is not None:
        state.log.info(
            server_logger, f"Connection successfully established from {session.client_name}"
        )
    else:
        state.log.info(server_logger, "Connection successfully established")
        state.log.warn(server_logger, "Library developers: Please specify a 'Client-Name' header.")
    stats_task = asyncio.create_task(_send_stats_every(session, state, options.stats_interval))
    try:
        async for message in socket:
            if message.type is WSMsgType.TEXT:
                state.log.warn(
                    server_logger,
                    "Lavalink v4 does not support websocket messages. Please use the REST api.",
                )
    finally:
        stats_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stats_task
        state.sessions.pop(session.session_id, None)
        state.log.info(
            server_logger,
            f"Connection closed from {request.remote} with id {session.session_id} -- "
            f"{socket.close_code}",
        )
    return socket


async def _close_sessions(app: web.Application) -> None:
    # A graceful stop says goodbye on every socket (SIGTERM runs Lavalink's ShutdownHandler).
    for session in list(app[STATE_KEY].sessions.values()):
        await session.socket.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutting down")


def abort_connections(app: web.Application) -> None:
    """Drop every WebSocket without a close frame, as a dying process does (clients see 1006)."""
    for session in list(app[STATE_KEY].sessions.values()):
        transport = session.request.transport
        if transport is not None:
            transport.abort()
    app[STATE_KEY].sessions.clear()


# --- Control endpoint and memory growth (the simulator's own, not Lavalink's) -----------------


def faults_document(state: NodeState) -> JsonObject:
    """What `GET /sim/faults` answers: the faults, and how much memory has grown so far."""
    return {
        **state.faults.to_json(now=time.monotonic()),
        "memory_grown_bytes": state.ballast.size,
    }


async def _get_faults(request: web.Request) -> web.Response:
    return _json_response(faults_document(request.app[STATE_KEY]))


async def _post_faults(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        document = await request.json()
        update = parse_fault_update(document, now=time.monotonic())
    except InvalidFault as invalid:
        return _control_error(request, invalid.field, invalid.problem)
    except ValueError as unreadable:  # not JSON (json.JSONDecodeError, UnicodeDecodeError)
        return _control_error(request, "body", f"must be a JSON object ({unreadable})")
    state.faults.apply(update)
    if update.clear:
        state.ballast.release()
    state.crash_ordered.set()  # a crash may have been ordered, moved or cancelled
    now_broken = faults_document(state)
    log.info("Faults changed: %s", json.dumps(now_broken, separators=(",", ":")))
    return _json_response(now_broken)


def _control_error(request: web.Request, field_name: str, problem: str) -> web.Response:
    return error_response(
        request,
        HTTPStatus.BAD_REQUEST,
        f"{field_name}: {problem}",
        exception="java.lang.IllegalArgumentException",
        extra={"field": field_name},
    )


async def _grow_memory(state: NodeState) -> None:
    """`memory_growth`: allocate the bytes due every tick, never past `memory_cap` of RSS."""
    grown_until = time.monotonic()
    while True:
        await asyncio.sleep(MEMORY_GROWTH_TICK_SECONDS)
        now = time.monotonic()
        due = int(state.faults.memory_growth * (now - grown_until))
        grown_until = now
        if due > 0:
            room = state.faults.memory_cap - _resident_memory_bytes()
            state.ballast.grow(min(due, room))


async def _memory_growth_task(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_grow_memory(app[STATE_KEY]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- Metrics -----------------------------------------------------------------------------------


_MEMORY_HELP: Final = "Memory statistics in bytes."
_CPU_HELP: Final = "CPU statistics."
# (name, help, value) as LavalinkStatsCollector.kt exports them; the help texts are collect()'s.
_STATS_GAUGES: Final[tuple[tuple[str, str, Callable[[NodeStats], float]], ...]] = (
    ("lavalink_players_total", "Total number of players connected.", lambda s: s.players),
    (
        "lavalink_playing_players_total",
        "Number of players currently playing audio.",
        lambda s: s.playing_players,
    ),
    ("lavalink_uptime_milliseconds", "Uptime of the node in milliseconds.", lambda s: s.uptime_ms),
    ("lavalink_memory_free_bytes", f"{_MEMORY_HELP} (Free)", lambda s: s.memory.free),
    ("lavalink_memory_used_bytes", f"{_MEMORY_HELP} (Used)", lambda s: s.memory.used),
    (
        "lavalink_memory_allocated_bytes",
        f"{_MEMORY_HELP} (Allocated)",
        lambda s: s.memory.allocated,
    ),
    (
        "lavalink_memory_reservable_bytes",
        f"{_MEMORY_HELP} (Reservable)",
        lambda s: s.memory.reservable,
    ),
    ("lavalink_cpu_cores", f"{_CPU_HELP} (Cores)", lambda s: s.cpu.cores),
    (
        "lavalink_cpu_system_load_percentage",
        f"{_CPU_HELP} (System Load)",
        lambda s: s.cpu.system_load,
    ),
    (
        "lavalink_cpu_lavalink_load_percentage",
        f"{_CPU_HELP} (LL Load)",
        lambda s: s.cpu.lavalink_load,
    ),
)


class LavalinkStatsCollector:
    """`metrics/LavalinkStatsCollector.kt`: ten gauges from `retrieveStats(null)` per scrape."""

    def __init__(self, state: NodeState) -> None:
        self._state = state

    def describe(self) -> Iterable[Metric]:
        # Declared so that registering does not take a CPU sample.
        return [GaugeMetricFamily(name, help_text) for name, help_text, _ in _STATS_GAUGES]

    def collect(self) -> Iterable[Metric]:
        stats = self._state.stats()
        for name, help_text, read in _STATS_GAUGES:
            yield GaugeMetricFamily(name, help_text, value=float(read(stats)))


class LogbackAppenderCollector:
    """simpleclient_logback's `logback_appender_total{level}`, every level present from 0."""

    def __init__(self, log: NodeLog) -> None:
        self._log = log

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "logback_appender",
            "Logback log statements at various log levels",
            labels=["level"],
        )
        for level in LOGBACK_LEVELS:
            family.add_metric([level], float(self._log.counts[level]))
        yield family


def _build_registry(state: NodeState) -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_* from /proc/self: the real RSS and CPU time
    registry.register(LavalinkStatsCollector(state))
    registry.register(LogbackAppenderCollector(state.log))
    return registry


# --- Assembly ----------------------------------------------------------------------------------


def build_app(options: SimOptions, *, faults: Faults | None = None) -> web.Application:
    """One node's routes, middleware and state; `serve` binds it, tests may run it in-process.

    `faults` defaults to what `options` ask for, `--exit-after` counted from now."""
    if faults is None:
        faults = Faults.from_options(options, started=time.monotonic())
    state = NodeState(options=options, faults=faults)
    app = web.Application(middlewares=[_lavalink_http])
    app[OPTIONS_KEY] = options
    app[STATE_KEY] = state
    app[REGISTRY_KEY] = _build_registry(state)
    app.router.add_get("/version", _version)
    app.router.add_get("/v4/info", _info)
    app.router.add_get("/v4/stats", _stats)
    app.router.add_get("/v4/loadtracks", _load_tracks)
    app.router.add_get(WEBSOCKET_PATH, _websocket)
    app.router.add_get(METRICS_PATH, _metrics)
    app.router.add_get(CONTROL_PATH, _get_faults)
    app.router.add_post(CONTROL_PATH, _post_faults)
    app.on_response_prepare.append(_add_api_version_header)
    app.on_shutdown.append(_close_sessions)
    app.cleanup_ctx.append(_memory_growth_task)
    return app


def _seconds_until(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def _stopped_within(stop: asyncio.Event, seconds: float | None) -> bool:
    """Wait for `stop` up to `seconds` (None: forever); True if it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def _until_any_set(events: Sequence[asyncio.Event], seconds: float | None) -> None:
    """Return once one of `events` is set, or after `seconds` (None: no limit)."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def _until_stopped_or_crashed(stop: asyncio.Event, state: NodeState) -> CrashOrder | None:
    """Serve until `stop` (None) or until a crash order falls due (that order). Every control
    update sets `crash_ordered`, so an order placed, moved or cancelled meanwhile counts."""
    while True:
        state.crash_ordered.clear()
        crash = state.faults.crash
        deadline = None if crash is None else crash.at
        await _until_any_set((stop, state.crash_ordered), _seconds_until(deadline))
        if stop.is_set():
            return None
        crash = state.faults.crash
        if crash is not None and crash.at <= time.monotonic():
            return crash


async def serve(options: SimOptions, *, install_signal_handlers: bool = True) -> None:
    """Run one node until SIGTERM/SIGINT (returns) or a crash (raises `SimulatedCrash`): the
    `exit_after` deadline, or an order from the control endpoint.

    The port is bound only after `startup_delay`, so connections are refused until then, as
    while a JVM boots. `fail_at_start` raises `SimulatedStartupFailure` before anything else.
    """
    if options.fail_at_start:
        raise SimulatedStartupFailure("simulated start-up failure (--fail-at-start)")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_signals = (signal.SIGTERM, signal.SIGINT) if install_signal_handlers else ()
    for stop_signal in stop_signals:
        loop.add_signal_handler(stop_signal, stop.set)
    started = time.monotonic()
    faults = Faults.from_options(options, started=started)
    try:
        ready_at = started + options.startup_delay
        if faults.crash is not None and faults.crash.at <= ready_at:
            # Dies while "booting": the port is never bound.
            if await _stopped_within(stop, _seconds_until(faults.crash.at)):
                return
            raise SimulatedCrash(faults.crash.exit_code)
        if await _stopped_within(stop, _seconds_until(ready_at)):
            return
        app = build_app(options, faults=faults)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, options.host, options.port, reuse_address=True).start()
            log.info(
                "Lavalink (%s flavour) is ready to accept connections on %s:%d.",
                options.flavour,
                options.host,
                options.port,
            )
            crash = await _until_stopped_or_crashed(stop, app[STATE_KEY])
            if crash is None:
                return
            abort_connections(app)
            raise SimulatedCrash(crash.exit_code)
        finally:
            await runner.cleanup()
    finally:
        for stop_signal in stop_signals:
            loop.remove_signal_handler(stop_signal)


# --- Command line ------------------------------------------------------------------------------


def _flag_type(
    check: Callable[[object], T], read_text: Callable[[str], object] = str
) -> Callable[[str], T]:
    """An argparse `type` running the control endpoint's check on the flag's converted text."""

    def convert(text: str) -> T:
        try:
            return check(read_text(text))
        except ValueError as problem:
            raise argparse.ArgumentTypeError(str(problem)) from None

    return convert


def _comma_list(text: str) -> list[str]:
    return text.split(",")


def _check_positive_seconds(value: object) -> float:
    seconds = check_seconds(value)
    if seconds == 0:
        raise ValueError("must be > 0")
    return seconds


def parse_options(argv: Sequence[str] | None = None) -> SimOptions:
    parser = argparse.ArgumentParser(
        prog="python -m watchdog_lab.lavalink",
        description="Simulate one Lavalink v4 node (REST, WebSocket, /metrics) on a real port. "
        f"Faults can be changed while it runs: GET/POST {CONTROL_PATH} (see the module doc).",
    )
    seconds = _flag_type(check_seconds, float)
    parser.add_argument("--port", type=int, default=2333)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--password", default="youshallnotpass")
    parser.add_argument("--flavour", type=Flavour, choices=list(Flavour), default=Flavour.JAVA)
    parser.add_argument(
        "--startup-delay",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="bind the port only after this long (the JVM takes 10-15 s)",
    )
    parser.add_argument(
        "--fail-sources",
        type=_flag_type(check_failing_sources, _comma_list),
        default=frozenset(),
        metavar="SOURCE[,SOURCE...]",
        help="these sources answer loadType error",
    )
    parser.add_argument(
        "--error-severity",
        type=_flag_type(check_severity),
        choices=list(Severity),
        default=Severity.COMMON,
    )
    parser.add_argument(
        "--latency",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="added to every REST answer (not /metrics, not the WebSocket)",
    )
    parser.add_argument(
        "--exit-after",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="crash this long after start",
    )
    parser.add_argument(
        "--exit-code",
        type=_flag_type(check_exit_code, int),
        default=DEFAULT_EXIT_CODE,
        help="exit code of the crash",
    )
    parser.add_argument(
        "--fail-at-start", action="store_true", help="exit 1 at once, never binding the port"
    )
    parser.add_argument(
        "--stats-interval",
        type=_flag_type(_check_positive_seconds, float),
        default=DEFAULT_STATS_INTERVAL,
        metavar="SECONDS",
        help="period of the WebSocket stats op (Lavalink: 60)",
    )
    parser.add_argument(
        "--fail-endpoints",
        type=_flag_type(check_fail_endpoints, _comma_list),
        default=frozenset(),
        metavar="PATH[,PATH...]",
        help=f"these answer --fail-status with Spring's error body; of {', '.join(FAILABLE_PATHS)}",
    )
    parser.add_argument(
        "--fail-status",
        type=_flag_type(check_fail_status, int),
        default=DEFAULT_FAIL_STATUS,
        metavar="STATUS",
        help="status of --fail-endpoints, 500..599 (default 500)",
    )
    parser.add_argument(
        "--refuse-websocket",
        action="store_true",
        help="fail every WebSocket handshake with HTTP 500 (after the auth checks)",
    )
    parser.add_argument(
        "--memory-growth",
        type=_flag_type(check_byte_count),
        default=0,
        metavar="BYTES_PER_SECOND",
        help="grow the resident memory this fast, e.g. 50000000 or 64M",
    )
    parser.add_argument(
        "--memory-cap",
        type=_flag_type(check_byte_count),
        default=DEFAULT_MEMORY_CAP_BYTES,
        metavar="BYTES",
        help="resident memory at which the growth stops (default 3G)",
    )
    arguments = parser.parse_args(argv)
    return SimOptions(
        port=arguments.port,
        host=arguments.host,
        password=arguments.password,
        flavour=arguments.flavour,
        startup_delay=arguments.startup_delay,
        failing_sources=arguments.fail_sources,
        error_severity=arguments.error_severity,
        latency=arguments.latency,
        exit_after=arguments.exit_after,
        exit_code=arguments.exit_code,
        fail_at_start=arguments.fail_at_start,
        stats_interval=arguments.stats_interval,
        fail_endpoints=arguments.fail_endpoints,
        fail_status=arguments.fail_status,
        refuse_websocket=arguments.refuse_websocket,
        memory_growth=arguments.memory_growth,
        memory_cap=arguments.memory_cap,
    )


def command_line(flavour: str, *extra: str, password: str, port: int = 2333) -> str:
    """The shell command that runs one simulator node with this interpreter (an ExecStart)."""
    return " ".join(
        [
            sys.executable,
            "-m",
            "watchdog_lab.lavalink",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--password",
            password,
            "--flavour",
            flavour,
            *extra,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(process)d --- %(name)s : %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(options))
    except SimulatedStartupFailure as failure:
        log.error("Lavalink failed to start: %s", failure)  # noqa: TRY400 - an outcome, not a bug
        return 1
    except SimulatedCrash as crash:
        log.error("Lavalink crashed: %s", crash)  # noqa: TRY400 - an outcome, not a bug
        return crash.exit_code
    log.info("Lavalink stopped (SIGTERM/SIGINT).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
