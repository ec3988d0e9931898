"""After a rollback: is the fallback healthy too? Checked for ``after.duration``, never undone.

The runbook's last instruction is to keep watching the old server after the switch: memory
under 2 GB, CPU under 50 %, the profile's basic endpoints under 500 ms, no memory growth. A
fallback that fails them is news for people (an alert, the incident's message, a metric), never
a reason to switch back on its own -- that would be the ping-pong the design forbids. Each
check is one ``verify.Check``, the same judgement the verification step made; the memory growth
is the resident memory now against the first sample of the watch.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from watchdog import config, profiles
from watchdog.executor import verify
from watchdog.executor.units import Units


@dataclass(slots=True)
class AfterWatch:
    """One target's fallback, watched after its rollback."""

    target: config.TargetSettings
    password: str
    first_rss: int | None = None  # bytes, at the first check of the watch
    rss_source: str = ""  # what measured it (container stats or /proc): never mix the two
    checks: int = 0
    unhealthy: int = 0  # checks that found a problem
    last_problems: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)  # the watch's start

    async def check(self, systemd: Units | None, client: httpx.AsyncClient) -> list[verify.Check]:
        """One round: the fallback's process and its endpoints against the runbook's limits."""
        settings = self.target.runbook.verify
        service = profiles.get(self.target.profile).bind(self.target, self.password)
        found: list[verify.Check] = [await verify.latency(client, service, settings)]
        if systemd is not None:
            status = await systemd.status(self.target.fallback.unit)
            found.append(
                verify.Check(
                    "unit",
                    status.active,
                    f"{status.name} {status.active_state}/{status.sub_state}",
                )
            )
            container = verify.measurer(systemd)
            measured = None
            if status.active and container is not None:  # Docker's stats of the container
                measured = await verify.usage(container, self.target.fallback.unit, settings)
            source = "container" if measured is not None else "process"
            if measured is not None:
                found += measured[0]
                rss = measured[1]
            elif status.active and status.main_pid > 0:
                pid = status.main_pid
                found.append(await asyncio.to_thread(verify.memory, pid, settings))
                found.append(await verify.cpu(pid, settings))
                rss = await asyncio.to_thread(verify.rss_bytes, pid)
            else:
                rss = -1  # nothing to measure
            if source != self.rss_source:  # another measure: growth starts again from it
                self.first_rss, self.rss_source = None, source
            if rss >= 0:
                settled = time.monotonic() - self.began >= settings.settle
                found.append(self._growth(rss, settled=settled))
        self.checks += 1
        problems = [f"{c.name}: {c.detail}" for c in found if not c.ok]
        if problems:
            self.unhealthy += 1
        self.last_problems = problems
        return found

    def _growth(self, rss: int, *, settled: bool = True) -> verify.Check:
        """Growth since the first reading after the service settled (a JVM heap grows first)."""
        if rss <= 0:
            return verify.Check("memory growth", True, "no resident memory reading")
        if self.first_rss is None or not settled:
            self.first_rss = rss
        limit = self.target.after.max_memory_growth
        growth = (rss - self.first_rss) / self.first_rss
        return verify.Check(
            "memory growth",
            growth <= limit,
            f"RSS {rss / 1024**2:.0f} MiB, {growth:+.0%} since the watch began "
            f"(limit +{limit:.0%})",
        )

    def summary(self) -> dict[str, object]:
        return {
            "checks": self.checks,
            "unhealthy": self.unhealthy,
            "last_problems": self.last_problems,
        }
