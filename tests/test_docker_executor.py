"""The Docker executor's pure parts: which engine events concern a target's containers, how an
inspect record reads as a unit, the crash-loop signal named for Docker, and the config that
refuses what containers cannot do. (The engine itself is exercised in tests/lab.)"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from watchdog import config, errors, journal, model
from watchdog.executor import docker, steps, verify
from watchdog.sources import systemd_watch


def event(name: str, **labels: str) -> dict[str, object]:
    return {"Type": "container", "Action": "die", "Actor": {"Attributes": {"name": name, **labels}}}


COMPOSE = {"com.docker.compose.project": "lavalink", "com.docker.compose.service": "java"}


def test_an_event_concerns_a_container_by_its_name_or_its_compose_labels() -> None:
    assert docker.concerns(event("rust"), "rust")
    assert not docker.concerns(event("rust-2"), "rust")
    assert docker.concerns(event("lavalink-java-1", **COMPOSE), "compose:lavalink/java")
    other = {**COMPOSE, "com.docker.compose.project": "other"}
    assert not docker.concerns(event("other-java-1", **other), "compose:lavalink/java")
    assert not docker.concerns({"Type": "container"}, "rust")  # no actor: about nothing of ours


def test_an_inspect_record_reads_as_a_unit() -> None:
    running = {
        "Id": "abc",
        "RestartCount": 4,
        "State": {
            "Running": True,
            "Status": "running",
            "Pid": 321,
            "StartedAt": "2026-12-07T17:00:00.5Z",
        },
        "HostConfig": {"RestartPolicy": {"Name": "unless-stopped"}},
    }
    unit = docker.status_of("rust", running)
    assert (unit.active, unit.enabled, unit.main_pid, unit.n_restarts) == (True, True, 321, 4)
    assert unit.active_enter_timestamp == pytest.approx(1796662800.5)
    crashed = {
        "Id": "abc",
        "State": {"Running": False, "Status": "exited", "ExitCode": 1, "Pid": 0},
        "HostConfig": {"RestartPolicy": {"Name": "no"}},
    }
    unit = docker.status_of("rust", crashed)
    assert (unit.active_state, unit.enabled, unit.stopped) == ("failed", False, True)
    stopped = {**crashed, "State": {"Running": False, "Status": "exited", "ExitCode": 0}}
    assert docker.status_of("rust", stopped).active_state == "inactive"


def docker_target(**extra: object) -> config.TargetSettings:
    return config.TargetSettings.model_validate(
        {
            "name": "lavalink",
            "executor": "docker",
            "primary": {"unit": "lavalink-rust", "job": "lavalink-rust"},
            "fallback": {"unit": "compose:lavalink/java", "job": "lavalink-java"},
            "rules": ["rules.yml"],
            **extra,
        }
    )


def test_the_crash_loop_signal_of_a_container_is_read_from_docker() -> None:
    rule = systemd_watch.crash_loop_rule(docker_target())
    assert rule.origin is model.Origin.DOCKER
    assert rule.severity is model.Severity.CRITICAL
    assert rule.expr.startswith("RestartCount(lavalink-rust)") and "Docker" in rule.summary
    watch = systemd_watch.SystemdWatch(docker_target())
    assert watch.observe(0.0).error == "Docker watch: no reading yet"


def test_a_flag_file_cannot_persist_a_container_switch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flag-file is for systemd units"):
        docker_target(runbook={"persistence": "flag-file", "flag_file": str(tmp_path / "f")})
    path = tmp_path / "config.yml"
    path.write_text(
        "targets:\n"
        "  - name: lavalink\n"
        "    executor: docker\n"
        "    primary: {unit: lavalink-rust.service, job: lavalink-rust}\n"
        "    fallback: {unit: lavalink-java, job: lavalink-java}\n"
        "    rules: [rules.yml]\n"
    )
    with pytest.raises(errors.ConfigError, match="is a systemd unit, but executor is docker"):
        config.load(path)


def stats(read: str, cpu_ns: int, usage: int, **memory: int) -> dict[str, object]:
    return {
        "read": read,
        "cpu_stats": {"cpu_usage": {"total_usage": cpu_ns}},
        "memory_stats": {"usage": usage, "stats": memory},
    }


def test_container_stats_read_as_docker_stats_computes_them() -> None:
    first = stats("2026-12-07T17:00:00.000000000Z", 1_000_000_000, 0)
    # cgroup v1: the inactive page cache is total_inactive_file; 0.3 s of CPU in 0.5 s
    second = stats(
        "2026-12-07T17:00:00.500000000Z", 1_300_000_000, 300 << 20, total_inactive_file=100 << 20
    )
    used = docker.usage_of("java", first, second)
    assert used.memory_bytes == 200 << 20
    assert used.cpu_share == pytest.approx(0.6)
    assert used.seconds == pytest.approx(0.5)
    v2 = stats("2026-12-07T17:00:00.500000000Z", 1_000_000_000, 300 << 20, inactive_file=50 << 20)
    assert docker.usage_of("java", first, v2).memory_bytes == 250 << 20


def test_stats_of_a_stopped_container_are_an_error_not_a_zero() -> None:
    first = stats("2026-12-07T17:00:00Z", 0, 0)
    with pytest.raises(docker.DockerError, match="no memory use"):
        docker.usage_of("java", first, stats("2026-12-07T17:00:01Z", 0, 0))
    with pytest.raises(docker.DockerError, match="no usable reading times"):
        docker.usage_of("java", first, stats("0001-01-01T00:00:00Z", 5, 1 << 20))


def test_a_restarting_container_is_activating_and_a_paused_one_still_runs() -> None:
    base = {
        "Id": "abc",
        "HostConfig": {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 5}},
    }
    restarting = {
        **base,
        "State": {"Running": True, "Restarting": True, "Status": "restarting", "Pid": 0},
    }
    unit = docker.status_of("rust", restarting)
    assert (unit.active_state, unit.active, unit.stopped) == ("activating", False, False)
    assert unit.restart_policy == "on-failure:5" and unit.enabled
    assert unit.as_dict()["RestartPolicy"] == "on-failure:5"  # the snapshot keeps it
    paused = {**base, "State": {"Running": True, "Paused": True, "Status": "paused", "Pid": 9}}
    assert docker.status_of("rust", paused).active  # it still holds its port and memory
    created = {**base, "State": {"Running": False, "Status": "created", "ExitCode": 0}}
    assert docker.status_of("rust", created).active_state == "inactive"


class FakeEngine:
    """An engine that answers with errors a real one cannot be made to give on demand (a
    500, a proxy's 503, a refused stats endpoint), over a real Unix socket, to the real
    aiodocker client. Everything else is 404."""

    def __init__(self, answers: dict[str, int]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, str]] = []  # (method, path, body), in order

    async def handle(self, request: web.Request) -> web.Response:
        path = (
            request.path.split("/", 2)[-1] if request.path.startswith("/v1.") else request.path[1:]
        )
        self.asked.append((request.method, path, await request.text()))
        if path == "version":
            return web.json_response({"ApiVersion": "1.41", "Version": "fake"})
        if path == "containers/rust/json":
            return web.json_response(
                {
                    "Id": "rust",
                    "Image": "sha256:x",
                    "State": {"Running": True, "Pid": 1},
                    "HostConfig": {"RestartPolicy": {"Name": "always"}},
                }
            )
        status = self.answers.get(path, 404)
        if status == 204:
            return web.Response(status=204)
        if status == 200:
            return web.json_response({"Warnings": []})
        return web.json_response({"message": f"fake {status}"}, status=status)


@contextlib.asynccontextmanager
async def fake_engine(
    tmp_path: Path, answers: dict[str, int], engine: FakeEngine | None = None
) -> AsyncIterator[docker.Containers]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", (engine or FakeEngine(answers)).handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.UnixSite(runner, str(tmp_path / "docker.sock"))
    await site.start()
    units = await docker.Containers.connect(f"unix://{tmp_path / 'docker.sock'}", call_timeout=5)
    try:
        yield units
    finally:
        await units.aclose()
        await runner.cleanup()


async def test_only_a_404_means_no_such_container(tmp_path: Path) -> None:
    async with fake_engine(tmp_path, {"containers/java/json": 500}) as units:
        assert (await units.status("gone")).load_state == "not-found"  # 404: it said so
        with pytest.raises(docker.DockerError, match="Docker said 500"):
            await units.status("java")  # an error is unknown, never "not found"
        assert units.connected


async def test_a_proxy_without_its_engine_is_a_lost_connection(tmp_path: Path) -> None:
    async with fake_engine(tmp_path, {"containers/java/json": 503}) as units:
        with pytest.raises(docker.DockerError, match="Docker said 503"):
            await units.status("java")
        assert not units.connected  # the run's step is then interrupted, not failed


async def test_stats_that_cannot_be_read_are_no_evidence(tmp_path: Path) -> None:
    settings = config.VerifySettings(cpu_sample=0.01)
    async with fake_engine(tmp_path, {"containers/rust/stats": 403}) as units:
        assert await verify.usage(units, "rust", settings) is None  # measure /proc instead
    async with fake_engine(tmp_path, {"containers/rust/stats": 503}) as units:
        with pytest.raises(docker.DockerError):
            await verify.usage(units, "rust", settings)  # lost: the step is interrupted


async def test_a_closed_connection_is_a_lost_one_not_a_crash(tmp_path: Path) -> None:
    async with fake_engine(tmp_path, {}) as units:
        units.close()  # the link dropped it while a run held it
        with pytest.raises(docker.DockerError, match="connection to Docker was closed"):
            await units.status("rust")
        assert not units.connected


def run_context(tmp_path: Path, units: docker.Containers) -> steps.Context:
    """A run in a real journal whose snapshot read the primary's restart policy as ``always``."""
    store = journal.Journal.open(tmp_path / "state")
    run = store.open_run(
        "lavalink",
        incident_id=None,
        trigger=model.Trigger.MANUAL,
        initiated_by="alice",
        reason="drill",
        at=0.0,
    )
    store.remember(run, "snapshot", {"primary": {"RestartPolicy": "always"}})
    target = docker_target().model_copy(
        update={"primary": config.UnitSettings(unit="rust", job="lavalink-rust")}
    )
    return steps.Context(target, units, store, tmp_path / "state", run, password="")


async def test_a_primary_that_would_not_stop_is_left_enabled_as_it_was(tmp_path: Path) -> None:
    """Disabled first, then stopped: when the stop fails the primary still serves, so its
    restart policy goes back to exactly what the snapshot read, never left at ``no``."""
    engine = FakeEngine({"containers/rust/update": 200, "containers/rust/stop": 500})
    async with fake_engine(tmp_path, {}, engine) as units:
        ctx = run_context(tmp_path, units)
        with pytest.raises(docker.DockerError, match="Docker said 500"):
            await steps.stop_primary(ctx)
        await ctx.http.aclose()
        ctx.journal.close()
    changes = [(path, body) for method, path, body in engine.asked if method == "POST"]
    assert changes == [
        ("containers/rust/update", '{"RestartPolicy": {"Name": "no"}}'),
        ("containers/rust/stop", ""),
        ("containers/rust/update", '{"RestartPolicy": {"Name": "always"}}'),
    ], changes


async def test_a_backup_that_cannot_read_the_primary_fails_before_anything_stops(
    tmp_path: Path,
) -> None:
    async with fake_engine(tmp_path, {"images/sha256:x/json": 500}) as units:
        ctx = run_context(tmp_path, units)
        with pytest.raises(steps.StepFailed, match="backup: cannot read what defines rust"):
            await steps.backup(ctx)
        await ctx.http.aclose()
        ctx.journal.close()
