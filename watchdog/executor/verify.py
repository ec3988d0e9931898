"""Is the fallback really serving? The runbook's verification list, checked from outside.

After the switch the operators check that the service answers (the profile's questions: for
Lavalink ``/version``, ``/v4/info``, ``/v4/stats``, track loading and a WebSocket session; for
an HTTP service its health endpoint), that its port is bound by the new process, memory < 2 GiB,
CPU < 50 %, basic endpoints < 500 ms. Each of those is one ``Check`` here, so the run's journal
shows which passed and why one failed. The service's questions are the profile's, shared with
the synthetic probes so both judge an answer the same way; the process facts come from
``/proc`` (the port's socket inode among the process tree's file descriptors, in the process's
own network namespace). For a container, memory and CPU are the container's as Docker's stats
measure them (``units.Usage``): the whole cgroup, not one process tree.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from watchdog import config, model
from watchdog.errors import ManagerError
from watchdog.executor.units import Usage
from watchdog.profiles import base

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the verification list."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0

    @classmethod
    def of(cls, probe: model.ProbeResult) -> Check:
        name = f"{probe.probe}:{probe.source}" if probe.source else probe.probe
        return cls(name, probe.ok, probe.detail, probe.seconds)


async def wait_ready(
    client: httpx.AsyncClient,
    service: base.Service,
    *,
    within: float,
    poll: float,
    waiting: Callable[[str], None] | None = None,
) -> Check:
    """Ask the profile's readiness question until it passes or ``within`` seconds pass;
    ``waiting`` hears each answer that was not yet ready."""
    started = time.monotonic()
    while True:
        answer = await service.ready(client)
        if not answer.ok and waiting is not None:
            waiting(answer.detail)
        if answer.ok:
            return Check(answer.probe, True, answer.detail, time.monotonic() - started)
        if time.monotonic() - started >= within:
            return Check(
                answer.probe,
                False,
                f"not ready within {within:g}s: {answer.detail}",
                time.monotonic() - started,
            )
        await asyncio.sleep(poll)


async def latency(
    client: httpx.AsyncClient, service: base.Service, settings: config.VerifySettings
) -> Check:
    """Each of the profile's basic endpoints answers under ``max_latency``."""
    timings: dict[str, float] = {}
    for answer in await service.timed(client):
        if not answer.ok:
            return Check("latency", False, answer.detail)
        timings[answer.probe] = answer.seconds
    slow = [n for n, t in timings.items() if t >= settings.max_latency]
    detail = ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in timings.items())
    return Check("latency", not slow, f"{detail} (limit {settings.max_latency * 1000:.0f} ms)")


def port_bound(pid: int, port: int) -> Check:
    """The service's port is bound by the process (or one of its children), from ``/proc``."""
    if pid <= 0 or not (PROC / str(pid)).exists():
        return Check("port", False, f"no main process (MainPID {pid})")
    listening = _listeners(port, pid)
    tree = [pid, *_descendants(pid)]
    bound = [p for p in tree if set(listening) & _socket_inodes(p)]
    if bound:
        return Check("port", True, f"port {port} bound by PID {bound[0]}")
    if not _fds_readable(pid):  # another user's process, and we are not root (polkit mode)
        uid = _uid(pid)
        owners = {owner for owner in listening.values()}
        if uid is not None and uid in owners:
            return Check("port", True, f"port {port} listened on by uid {uid}, MainPID {pid}'s")
        return Check("port", False, f"port {port} not listened on by uid {uid} (MainPID {pid})")
    return Check("port", False, f"port {port} not bound by PID {pid}")


def _fds_readable(pid: int) -> bool:
    try:
        os.listdir(PROC / str(pid) / "fd")
    except OSError:
        return False
    return True


def _uid(pid: int) -> int | None:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes(pid: int) -> int:
    """Resident memory of the process tree, in bytes (0 when it cannot be read)."""
    return sum(_rss_bytes(p) for p in [pid, *_descendants(pid)])


def memory(pid: int, settings: config.VerifySettings) -> Check:
    """Resident memory of the process tree under ``max_memory_bytes``."""
    return memory_of(sum(_rss_bytes(p) for p in [pid, *_descendants(pid)]), settings)


def memory_of(rss: int, settings: config.VerifySettings, *, what: str = "RSS") -> Check:
    """Resident memory (a process tree's, or a container's) under ``max_memory_bytes``."""
    return Check(
        "memory",
        0 < rss < settings.max_memory_bytes,
        f"{what} {rss / 1024**2:.0f} MiB (limit {settings.max_memory_bytes / 1024**2:.0f} MiB)",
    )


async def cpu(pid: int, settings: config.VerifySettings) -> Check:
    """CPU of the process tree over ``cpu_sample`` seconds, as a fraction of one core."""
    tree = [pid, *_descendants(pid)]
    before, started = sum(_cpu_seconds(p) for p in tree), time.monotonic()
    await asyncio.sleep(settings.cpu_sample)
    used = sum(_cpu_seconds(p) for p in tree) - before
    return cpu_of(used / (time.monotonic() - started), settings)


def cpu_of(share: float, settings: config.VerifySettings, *, what: str = "") -> Check:
    """CPU as a share of one core under ``max_cpu``."""
    return Check(
        "cpu",
        share < settings.max_cpu,
        f"{what}{share:.0%} of a core (limit {settings.max_cpu:.0%})",
    )


def measurer(manager: object) -> Usage | None:
    """The manager, if it measures a unit's use as a whole (Docker's container stats)."""
    return manager if isinstance(manager, Usage) else None


async def usage(
    units: Usage, name: str, settings: config.VerifySettings
) -> tuple[list[Check], int] | None:
    """Memory and CPU of the whole unit as its manager measures them (a container's stats),
    and the memory in bytes; None if the manager could not say (a proxy refusing the stats,
    a cgroup without its controller): the caller measures the process tree instead, since a
    missing reading is no evidence. A lost connection raises: the step is interrupted."""
    try:
        used = await units.usage(name, sample=settings.cpu_sample)
    except ManagerError:
        if not units.connected:
            raise
        return None
    checks = [
        memory_of(used.memory_bytes, settings, what="container memory"),
        cpu_of(used.cpu_share, settings, what="container: "),
    ]
    return checks, used.memory_bytes


def port_of(url: str, settings: config.VerifySettings) -> int:
    if settings.port is not None:
        return settings.port
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        for task in _listdir(PROC / str(current) / "task"):
            try:
                children = (PROC / str(current) / "task" / task / "children").read_text()
            except OSError:
                continue
            for child in children.split():
                found.append(int(child))
                pending.append(int(child))
    return found


def _listdir(path: Path) -> Iterable[str]:
    try:
        return os.listdir(path)
    except OSError:
        return ()


def _listeners(port: int, pid: int) -> dict[str, int]:
    """Socket inodes listening on ``port`` (TCP, IPv4 and IPv6) in the network namespace of
    ``pid`` (a container's own, or the host's), with the uid that owns each."""
    inodes: dict[str, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            try:
                lines = (PROC / "net" / table).read_text().splitlines()[1:]
            except OSError:
                continue
        for line in lines:
            fields = line.split()
            local, state, uid, inode = fields[1], fields[3], fields[7], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes[inode] = int(uid)
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in _listdir(PROC / str(pid) / "fd"):
        try:
            target = os.readlink(PROC / str(pid) / "fd" / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _rss_bytes(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def summary(checks: Iterable[Check]) -> dict[str, Any]:
    """The checks as journal data."""
    return {
        c.name: {"ok": c.ok, "detail": c.detail, "seconds": round(c.seconds, 3)} for c in checks
    }
