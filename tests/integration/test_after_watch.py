"""The watch after a rollback, against a real simulator process: a healthy fallback passes, a
slow one or one whose memory grows is flagged (and nothing here could switch anything back)."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.integration.test_probes import simulator, target
from watchdog.executor import after

pytestmark = pytest.mark.integration
PASSWORD = "youshallnotpass"


async def test_a_healthy_fallback_passes_every_check() -> None:
    with simulator("--flavour", "java") as url:
        watch = after.AfterWatch(target(url), PASSWORD)
        async with httpx.AsyncClient(timeout=5) as client:
            found = await watch.check(None, client)  # no systemd: the endpoints alone
    assert [c.name for c in found] == ["latency"]
    assert found[0].ok, found
    assert watch.summary() == {"checks": 1, "unhealthy": 0, "last_problems": []}


async def test_a_slow_fallback_is_flagged() -> None:
    with simulator("--flavour", "java", "--latency", "0.6") as url:
        watch = after.AfterWatch(target(url), PASSWORD)
        async with httpx.AsyncClient(timeout=5) as client:
            found = await watch.check(None, client)
    assert not found[0].ok and "limit 500 ms" in found[0].detail
    assert watch.unhealthy == 1 and watch.last_problems[0].startswith("latency:")


def test_memory_growth_is_measured_against_the_first_sample() -> None:
    watch = after.AfterWatch(target("http://127.0.0.1:9"), PASSWORD)
    rss = after.verify.rss_bytes(os.getpid())
    assert rss > 0
    assert watch._growth(rss).ok  # the first sample sets the baseline
    assert watch._growth(int(rss * 1.2)).ok  # +20 % is within the default +25 %
    grown = watch._growth(int(rss * 1.5))
    assert not grown.ok and "+50%" in grown.detail
