"""The daemon loop, live: real Prometheus scraping now, real journal, real /metrics socket."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import socket
import stat
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchdog import config, journal, logs, model, runtime, sdnotify
from watchdog.runtime import health, reload
from watchdog_lab import prometheus as sim_prometheus

pytestmark = pytest.mark.integration

DOWN_RULE = """\
groups:
  - name: test
    rules:
      - alert: TestServiceDown
        expr: up{job="lavalink-rust"} == 0
        labels: {severity: critical, rollback_category: instability}
        annotations: {summary: down, threshold: "== 0"}
      - alert: TestSlowWarning
        expr: vector(1) > 5
        labels: {severity: warning, rollback_category: minor_performance}
"""


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a /metrics text, parsed as Prometheus would."""
    for family in text_string_to_metric_families(metrics):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def scraping_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus that scrapes a Lavalink node that is down (nothing listens on its port)."""
    workdir = tmp_path_factory.mktemp("live")
    dead = closed_port()
    scrape = textwrap.dedent(f"""\
        global: {{scrape_interval: 1s, evaluation_interval: 1s}}
        scrape_configs:
          - job_name: lavalink-rust
            static_configs: [{{targets: ['127.0.0.1:{dead}']}}]
        """)
    with sim_prometheus.running_prometheus(workdir / "data", config_yaml=scrape) as server:
        yield server.url


def settings_for(tmp_path: Path, url: str, *, mode: str = "observe") -> config.Settings:
    rules = tmp_path / "rules.yml"
    rules.write_text(DOWN_RULE)
    path = tmp_path / "config.yml"
    path.write_text(
        textwrap.dedent(f"""\
        mode: {mode}
        interval: 1s
        state_dir: {tmp_path / "state"}
        prometheus: {{url: '{url}', timeout: 2s, retries: 1}}
        listen: {{port: 0}}
        targets:
          - name: lavalink
            primary: {{unit: lavalink-rust.service, job: lavalink-rust}}
            fallback: {{unit: lavalink-java.service, job: lavalink-java}}
            rules: [{rules}]
        """)
    )
    return config.load(path)


async def run_for(settings: config.Settings, seconds: float) -> tuple[runtime.Running, str]:
    stop = asyncio.Event()
    handles: list[runtime.Running] = []
    task = asyncio.create_task(runtime.run(settings, stop=stop, started=handles.append))
    await asyncio.sleep(seconds)
    assert handles, "daemon did not start"
    metrics = await asyncio.to_thread(
        lambda: (
            urllib.request.urlopen(f"http://127.0.0.1:{handles[0].listen_port}/metrics", timeout=5)
            .read()
            .decode()
        )
    )
    stop.set()
    await asyncio.wait_for(task, 10)
    return handles[0], metrics


async def wait_for_up_series(url: str) -> None:
    """Until the target has three scrapes (1 s apart): a replay's last step, up to a step
    before now, then finds one (``check`` right after the first scrape raced it)."""
    query = urllib.parse.quote('count_over_time(up{job="lavalink-rust"}[1m]) >= 3')
    for _ in range(200):
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{url}/api/v1/query?query={query}", timeout=5).read()
        )
        if b'"lavalink-rust"' in body:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("Prometheus never scraped the target three times")


async def test_a_down_service_without_systemd_is_a_rollback_asked_for_every_tick(
    scraping_prometheus: str, tmp_path: Path
) -> None:
    """Auto mode cannot act without systemd: each tick journals that it could not, and the
    incident is never marked as acted on, so the rollback starts once systemd is back."""
    await wait_for_up_series(scraping_prometheus)
    settings = settings_for(tmp_path, scraping_prometheus, mode="auto")
    _, metrics = await run_for(settings, 4.0)
    store = journal.Journal.open(settings.state_dir)
    decisions = store.decisions()
    (incident,) = store.incidents()
    acted = store._db.execute("SELECT acted FROM incidents").fetchone()["acted"]
    store.close()
    assert len(decisions) >= 2 and {d.action for d in decisions} == {"rollback"}
    assert all("no executor is connected" in d.outcome for d in decisions)
    assert acted is None
    assert (
        "TestServiceDown firing" in decisions[0].reason and "threshold == 0" in decisions[0].reason
    )
    assert (incident.status, incident.verdict) == ("open", "rollback")
    assert sample(metrics, "rollback_watchdog_verdict", target="lavalink", verdict="rollback") == 1
    firing = sample(
        metrics, "rollback_watchdog_signal_state", signal="TestServiceDown", state="firing"
    )
    assert firing == 1
    asked = sample(metrics, "rollback_watchdog_actions_total", action="rollback", target="lavalink")
    assert asked == len(decisions)


async def test_a_restart_does_not_act_twice(scraping_prometheus: str, tmp_path: Path) -> None:
    await wait_for_up_series(scraping_prometheus)
    settings = settings_for(tmp_path, scraping_prometheus)
    await run_for(settings, 2.5)
    await run_for(settings, 2.5)
    store = journal.Journal.open(settings.state_dir)
    assert [d.action for d in store.decisions()] == ["rollback"]
    store.close()


async def test_prometheus_down_keeps_running_inconclusive_and_never_acts(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"http://127.0.0.1:{closed_port()}")
    settings = settings.model_copy(update={"policy": config.PolicySettings(inconclusive_after=1)})
    _, metrics = await run_for(settings, 4.0)
    store = journal.Journal.open(settings.state_dir)
    actions = {d.action for d in store.decisions()}
    last = store.last_evaluation("lavalink")
    store.close()
    assert actions <= {"notify"}  # at most a notice that data is missing
    assert last is not None and last.verdict is model.Verdict.INCONCLUSIVE
    assert "unreachable" in last.reason
    verdict = sample(
        metrics, "rollback_watchdog_verdict", target="lavalink", verdict="inconclusive"
    )
    assert verdict == 1
    ticks = sample(metrics, "rollback_watchdog_evaluations_total", target="lavalink")
    assert ticks is not None and ticks >= 3  # the loop kept ticking
    errors = sample(metrics, "rollback_watchdog_source_errors_total", source="prometheus")
    assert errors is not None and errors >= 3


async def test_disarmed_target_is_judged_but_never_acted_on(
    scraping_prometheus: str, tmp_path: Path
) -> None:
    await wait_for_up_series(scraping_prometheus)
    settings = settings_for(tmp_path, scraping_prometheus, mode="auto")
    store = journal.Journal.open(settings.state_dir)
    store.set_armed("lavalink", False, at=0, by="test", note="rolled back earlier")
    store.close()
    _, metrics = await run_for(settings, 3.0)
    store = journal.Journal.open(settings.state_dir)
    assert store.decisions() == []
    last = store.last_evaluation("lavalink")
    store.close()
    assert last is not None and last.verdict is model.Verdict.ROLLBACK
    assert last.reason.startswith("disarmed")
    assert sample(metrics, "rollback_watchdog_armed", target="lavalink") == 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_check_shows_every_signal_and_exits_1_on_rollback(
    scraping_prometheus: str, tmp_path: Path
) -> None:
    await wait_for_up_series(scraping_prometheus)
    settings_for(tmp_path, scraping_prometheus)
    path = str(tmp_path / "config.yml")
    done = await asyncio.to_thread(cli, "check", "--config", path, "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "rollback", report["reason"]
    states = {s["name"]: s["state"] for s in report["signals"]}
    assert states == {
        "TestServiceDown": "firing",
        "TestSlowWarning": "ok",
        # the Lavalink profile compares with the fallback: a fresh Prometheus has no baseline
        "WorseThanFallback": "nodata",
        "WorseThanFallbackMinor": "nodata",
    }
    table = await asyncio.to_thread(cli, "check", "--config", path)
    assert table.returncode == 1
    assert "verdict ROLLBACK" in table.stdout
    assert re.search(r"TestServiceDown\s+critical\s+instability\s+firing\s+0\s+== 0", table.stdout)


async def test_status_after_a_run(scraping_prometheus: str, tmp_path: Path) -> None:
    await wait_for_up_series(scraping_prometheus)
    settings = settings_for(tmp_path, scraping_prometheus)
    await run_for(settings, 2.5)
    done = await asyncio.to_thread(cli, "status", "--config", str(tmp_path / "config.yml"))
    # the daemon ran in this process, seconds ago: fresh and alive, and its verdict needs a look
    assert done.returncode == 1, done.stderr
    assert "target lavalink: ARMED: NEEDS ATTENTION: verdict rollback" in done.stdout
    assert "  now: ROLLBACK (score " in done.stdout
    assert "verdict rollback since" in done.stdout
    assert re.search(r"incident #1 open rollback", done.stdout)
    assert "rollback (observe): would roll back (observe mode)" in done.stdout


async def test_the_listener_serves_readiness_and_the_status_api(
    scraping_prometheus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_TEST_API_TOKEN", "t0ken")
    settings = settings_for(tmp_path, scraping_prometheus)
    listen = settings.listen.model_copy(update={"token_env": "WATCHDOG_TEST_API_TOKEN"})
    settings = settings.model_copy(update={"listen": listen})
    stop = asyncio.Event()
    handles: list[runtime.Running] = []
    task = asyncio.create_task(runtime.run(settings, stop=stop, started=handles.append))
    try:
        for _ in range(100):
            if handles:
                break
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{handles[0].listen_port}"
        async with httpx.AsyncClient() as client:
            for _ in range(50):  # ready once every loop has ticked
                ready = await client.get(f"{url}/readyz")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            status = await client.get(
                f"{url}/api/v1/status", headers={"Authorization": "Bearer t0ken"}
            )
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        logs.reset()
    assert ready.json() == {"ready": True}
    assert status.status_code == 200
    (target,) = status.json()["targets"]
    assert target["target"] == "lavalink" and target["last_change"]["verdict"] == "rollback"


async def test_systemd_hears_ready_status_watchdog_pings_and_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a Type=notify unit with WatchdogSec=1s: READY=1 once the loop ticked, STATUS with
    the verdict, WATCHDOG=1 every half second while it makes progress, STOPPING=1 at the end."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    settings = settings_for(tmp_path, f"http://127.0.0.1:{closed_port()}")
    heard: list[str] = []

    async def hear(seconds: float) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(TimeoutError):
                heard.append((await asyncio.to_thread(listener.recv, 4096)).decode())

    try:
        await asyncio.gather(run_for(settings, 3.0), hear(4.0))
    finally:
        listener.close()
    assert heard[0].startswith("READY=1\nSTATUS=mode observe; lavalink: ")
    pings = [m for m in heard if m == "WATCHDOG=1"]
    assert 3 <= len(pings) <= 8  # every 0.5 s over the ~2.5 s it ran after READY
    assert any(m == "STATUS=mode observe; lavalink: inconclusive" for m in heard)
    assert heard[-1] == "STOPPING=1\nSTATUS=stopping"


async def test_a_wedged_loop_gets_no_watchdog_ping(tmp_path: Path) -> None:
    """WATCHDOG=1 only while every evaluation loop makes progress."""

    class Stalled:
        verdict = "hold"
        target = type("T", (), {"name": "lavalink"})()

        def since_last_tick(self) -> float:
            return 10_000.0  # far beyond three intervals plus the budget

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(1)
    supervisor = sdnotify.SystemdNotifier(
        {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    )
    settings = settings_for(tmp_path, "http://127.0.0.1:9")
    store = journal.Journal.open(tmp_path / "state")
    stop = asyncio.Event()
    task = asyncio.create_task(
        health._heartbeat(supervisor, store, [Stalled()], reload.Live(settings), stop)  # type: ignore[list-item]
    )
    try:
        said = (await asyncio.to_thread(listener.recv, 4096)).decode()
        assert said.startswith("STATUS=mode observe; lavalink: hold; not healthy:")
        assert "has not ticked" in said
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await task
        store.close()
    listener.setblocking(False)
    rest = []
    while True:
        try:
            rest.append(listener.recv(4096).decode())
        except BlockingIOError:
            break
    listener.close()
    assert "WATCHDOG=1" not in rest and not any(m.startswith("READY=1") for m in rest)


async def test_sighup_swaps_rules_and_mode_at_once_and_rejects_a_bad_file(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, f"http://127.0.0.1:{closed_port()}")
    path, rules_file = tmp_path / "config.yml", tmp_path / "rules.yml"
    stop, reload = asyncio.Event(), asyncio.Event()
    handles: list[runtime.Running] = []
    task = asyncio.create_task(
        runtime.run(settings, stop=stop, started=handles.append, config_path=path, reload=reload)
    )

    async def reloaded(check: Callable[[], bool]) -> None:
        reload.set()
        for _ in range(100):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the reload never took effect")

    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        for _ in range(200):
            if handles:
                break
            await asyncio.sleep(0.05)
        target = handles[0].targets[0]
        assert [r.name for r in target.rules] == ["TestServiceDown", "TestSlowWarning"]
        # a good change: one rule fewer, approve mode, a new approver list
        rules_file.write_text(DOWN_RULE.split("      - alert: TestSlowWarning")[0])
        path.write_text(
            path.read_text().replace("mode: observe", "mode: approve\napproval: {approvers: [al]}")
        )
        await reloaded(lambda: [r.name for r in target.rules] == ["TestServiceDown"])
        assert target.mode is model.Mode.APPROVE and target.launch is None
        assert target.gatekeeper is not None and target.gatekeeper.rules.approvers == {"al"}
        # a bad rules file: rejected whole, the running rules and mode stay
        rules_file.write_text(
            "groups: [{name: x, rules: [{alert: Bad, expr: 'up ==', labels: {}}]}]"
        )
        path.write_text(path.read_text().replace("mode: approve", "mode: auto"))
        await reloaded(lambda: "reload rejected" in stream.getvalue())
        rejected = next(
            line for line in stream.getvalue().splitlines() if "reload rejected" in line
        )
        assert "rules.yml" in rejected and "the running config stays" in rejected
        assert [r.name for r in target.rules] == ["TestServiceDown"]
        assert target.mode is model.Mode.APPROVE
        # a file that makes the YAML reader recurse without end: rejected too, still running
        rules_file.write_text(DOWN_RULE)
        path.write_text(path.read_text() + "loop: &a [*a]\n")
        await reloaded(lambda: stream.getvalue().count("reload rejected") >= 2)
        assert not task.done() and target.mode is model.Mode.APPROVE
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        logs.reset()


@contextlib.asynccontextmanager
async def started(settings: config.Settings) -> AsyncIterator[tuple[str, runtime.Running]]:
    """The daemon running, ready; its base URL and handles."""
    stop = asyncio.Event()
    handles: list[runtime.Running] = []
    task = asyncio.create_task(runtime.run(settings, stop=stop, started=handles.append))
    try:
        for _ in range(200):
            if handles or task.done():
                break
            await asyncio.sleep(0.05)
        assert handles, f"the daemon did not start: {task}"
        url = f"http://127.0.0.1:{handles[0].listen_port}"
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
        yield url, handles[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def with_operator(settings: config.Settings, env: str) -> config.Settings:
    operator = config.OperatorSettings(name="alice", token_env=env)
    listen = settings.listen.model_copy(update={"operators": [operator]})
    return settings.model_copy(update={"listen": listen, "mode": model.Mode.AUTO})


async def test_a_journal_deleted_while_running_stops_every_new_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WD_ALICE", "alice-t0ken")
    settings = with_operator(
        settings_for(tmp_path, f"http://127.0.0.1:{closed_port()}"), "WD_ALICE"
    )
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        async with started(settings) as (url, _), httpx.AsyncClient() as client:
            (settings.state_dir / journal.DATABASE_NAME).unlink()
            ready = await client.get(f"{url}/readyz")
            order = await client.post(
                f"{url}/api/v1/rollback",
                json={"reason": "drill"},
                headers={"Authorization": "Bearer alice-t0ken"},
            )
            await asyncio.sleep(2.5)  # ticks: each refused, none acts
            metrics = (await client.get(f"{url}/metrics")).text
            again = await client.get(f"{url}/readyz")
    finally:
        logs.reset()
    assert ready.status_code == 503
    assert "journal.sqlite3 was deleted" in ready.json()["problem"]
    assert "no action is taken" in ready.json()["problem"]
    assert order.status_code == 503 and "restart the watchdog" in order.json()["message"]
    assert again.status_code == 503  # it sticks until a restart
    assert (
        sample(metrics, "rollback_watchdog_source_errors_total", source="journal_lost") or 0
    ) >= 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    lost = [line for line in lines if line["event"] == "journal lost"]
    assert len(lost) == 1 and lost[0]["level"] == "error"  # said once, loudly
    assert not [line for line in lines if line["event"] == "tick failed"]


async def test_a_start_on_a_lost_journal_says_so_and_starts_disarmed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"http://127.0.0.1:{closed_port()}")
    async with started(settings) as (_, running):  # a first life: it claims the directory
        old = running.journal.journal_id
    (settings.state_dir / journal.DATABASE_NAME).unlink()  # deleted while the daemon was down
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        async with started(settings) as (_, running):
            arming = running.journal.arming("lavalink")
    finally:
        logs.reset()
    assert not arming.armed and arming.by == "rollback-watchdog"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [lost] = [line for line in lines if line["event"].startswith("journal lost")]
    assert lost["level"] == "error" and lost["previous"] == old
    assert "Every target starts disarmed" in lost["event"]
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        async with started(settings) as (_, running):  # said once: the next start is quiet
            assert not running.journal.arming("lavalink").armed  # still, until re-armed
    finally:
        logs.reset()
    assert "journal lost" not in stream.getvalue()


async def test_the_state_directory_is_tightened_and_open_token_files_are_named(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, f"http://127.0.0.1:{closed_port()}")
    state = settings.state_dir
    (state / "reports").mkdir(parents=True)
    state.chmod(0o755)
    (state / "reports" / "run-1.md").write_text("the password was in here\n")
    (state / "reports" / "run-1.md").chmod(0o644)
    token = tmp_path / "api.token"
    token.write_text("t0ken-for-everyone\n")
    token.chmod(0o644)
    listen = settings.listen.model_copy(update={"token_file": token})
    settings = settings.model_copy(update={"listen": listen})
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        async with started(settings):
            pass
    finally:
        logs.reset()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [state, *state.rglob("*")]}
    assert set(modes.values()) <= {0o700, 0o600}, modes
    assert modes["state"] == 0o700 and modes["run-1.md"] == 0o600
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    warned = [line["problem"] for line in lines if line["event"] == "check the config's files"]
    assert warned == [
        f"the operator API token file {token} is open to other users (mode 0644): "
        f"chmod 600 {token} (or 640 for a group that needs it)"
    ]
    assert "t0ken-for-everyone" not in stream.getvalue()


async def test_the_journal_is_pruned_at_start_by_retention(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"http://127.0.0.1:{closed_port()}")
    store = journal.Journal.open(settings.state_dir)
    for at, verdict in ((1000.0, model.Verdict.ROLLBACK), (2000.0, model.Verdict.HOLD)):
        store.record(
            model.Evaluation("lavalink", at, ()),
            model.Decision("lavalink", at, verdict, model.Action.NONE, "seeded"),
            mode=model.Mode.OBSERVE,
            outcome="none",
        )
    store.close()
    async with started(settings) as (_, running):
        for _ in range(100):
            seeded = [e.at for e in running.journal.evaluations("lavalink") if e.at < 1e9]
            if seeded == [2000.0]:
                break
            await asyncio.sleep(0.05)
    # 1970 is past 90 days: pruned, but for the target's latest verdict change at the time
    assert seeded == [2000.0]
