"""Wiring and supervision: build everything from the settings, run one guard per target.

The shape follows kopf's reactor: root tasks in an ``asyncio.TaskGroup``, a stop event set by
SIGTERM/SIGINT, and every tick bounded by a timeout so a hung Prometheus never stalls the loop.
A tick that fails is logged and counted, and the loop goes on: the watchdog must keep watching
when its sources misbehave -- and with no data it reports ``inconclusive``, it never acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from watchdog import (
    config,
    configcheck,
    gate,
    journal,
    logs,
    model,
    notify,
    pipeline,
    rules,
    sdnotify,
    server,
    sources,
    statedir,
    telemetry,
    timefmt,
)
from watchdog.executor import runbook
from watchdog.notify import channel, grafana, slack, webhook
from watchdog.runtime.guard import Guard, _probe, _stop_watching, _warm_start
from watchdog.runtime.health import _heartbeat, _housekeeping, _readiness
from watchdog.runtime.intake import Intake
from watchdog.runtime.link import ManagerLink, _longest_step, _reconcile, managers
from watchdog.runtime.reload import Live, Reloader
from watchdog.runtime.secrets import Secrets
from watchdog.sources import alertmanager, baseline, probes, prometheus, systemd_watch

if TYPE_CHECKING:
    from watchdog.runtime.fleet import FleetLink

log = structlog.get_logger("watchdog.runtime")


@dataclass(frozen=True, slots=True)
class Running:
    """Handles a caller (or a test) may want while the daemon runs."""

    targets: list[pipeline.Target]
    listen_port: int
    journal: journal.Journal


async def run(
    settings: config.Settings,
    *,
    stop: asyncio.Event | None = None,  # set by tests; signals set it otherwise
    clock: Callable[[], float] = time.time,
    started: Callable[[Running], None] | None = None,  # tests learn ports and handles
    config_path: Path | None = None,  # re-read on SIGHUP (or when ``reload`` is set)
    reload: asyncio.Event | None = None,  # set by tests; SIGHUP sets it otherwise
) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop if stop is not None else asyncio.Event()
    # secrets first: a missing one is bad input that must change nothing, not even state_dir
    secrets = Secrets.read(settings)
    logs.redact(*secrets.values())
    for warning in configcheck.problems(settings):
        if not warning.fatal:  # a fatal one would have stopped Secrets.read, or preflight says
            log.warning("check the config's files", problem=warning.message)
    with statedir.exclusive(settings.state_dir):
        await _run(
            settings,
            secrets=secrets,
            stop=stop,
            clock=clock,
            started=started,
            config_path=config_path,
            reload=reload if reload is not None else asyncio.Event(),
        )


def _claim(store: journal.Journal, settings: config.Settings, now: float) -> None:
    """Say so loudly when the journal is not the one the state directory held, then mark the
    directory as this journal's. A journal created where another was (it records that itself)
    means the old one is gone -- every approval, run and audit line -- and whether a target
    was rolled back is no longer known: every target starts disarmed, so nothing switches
    until an operator has looked and re-armed it."""
    lost = store.lost_predecessor()
    previous = statedir.read_marker(settings.state_dir)
    if lost is not None:
        log.error(
            "journal lost: the state directory had a journal that is gone; its incidents, "
            "approvals, runs and audit trail are lost. Every target starts disarmed: check "
            "which unit runs, then re-arm (rollback-watchdog rearm)",
            journal=str(store.path),
            previous=lost.journal_id,
            previous_created_at=timefmt.format_instant(lost.created_at),
        )
        store.disarm_after_loss(
            [target.name for target in settings.targets],
            at=now,
            note=f"journal {lost.journal_id} was lost: re-arm once checked",
        )
    elif previous is not None and previous.journal_id != store.journal_id:
        log.warning(
            "the state directory held another journal before this one",
            journal=str(store.path),
            previous=previous.journal_id,
            previous_created_at=timefmt.format_instant(previous.created_at),
        )
    if previous is None or previous.journal_id != store.journal_id:
        statedir.write_marker(
            settings.state_dir, statedir.Marker(store.journal_id, store.created_at)
        )


async def _run(
    settings: config.Settings,
    *,
    secrets: Secrets,
    stop: asyncio.Event,
    clock: Callable[[], float],
    started: Callable[[Running], None] | None,
    config_path: Path | None,
    reload: asyncio.Event,
) -> None:
    operators, passwords = secrets.operators, secrets.passwords
    log.info("starting", state_dir=str(settings.state_dir), mode=settings.mode.value)
    # every resource is closed in reverse order however far start-up got
    async with contextlib.AsyncExitStack() as resources:
        resources.callback(log.info, "stopped")
        # from the very start: SIGTERM during the start-up reconcile pauses it at a safe point
        resources.enter_context(_signals_set(stop, reload if config_path is not None else None))
        for change in statedir.tighten(settings.state_dir):  # before the journal is read
            log.warning("state directory tightened: owner only", change=change)
        store = journal.Journal.open(settings.state_dir)
        resources.callback(store.close)
        _claim(store, settings, clock())
        recorder = telemetry.Recorder()
        recorder.journal_intact.set(1)  # just opened: ours
        source = sources.build(settings.prometheus)
        resources.callback(source.close)
        fleet = await _fleet(settings, secrets, recorder, clock)
        if fleet is not None:
            resources.push_async_callback(fleet.close)
        guards: list[Guard] = []
        live = Live(settings)  # a reload replaces it

        async def status() -> dict[str, Any]:
            names = [t.name for t in settings.targets]
            shown = {
                "mode": live.settings.mode.value,
                "targets": await asyncio.to_thread(store.status, names),
                "unrouted_alerts": await asyncio.to_thread(store.unrouted_status),
            }
            if fleet is not None:
                shown["fleet"] = await fleet.status()
            return shown

        async def readiness() -> str | None:
            return await _readiness(store, guards, live.settings)

        gatekeeper = gate.Gate(settings, store, _notifiers(settings, secrets, store), clock=clock)
        resources.push_async_callback(gatekeeper.aclose)
        intake = Intake(gatekeeper, guards, recorder, clock)
        resources.callback(intake.flush)  # what was counted last is logged at the stop
        rule_sets = {t.name: rules.load(t.rules, t.rule_variables).rules for t in settings.targets}
        intake.route_before_start(  # alerts that arrive while starting are kept
            [
                alertmanager.Destination(t.name, t.alert_matchers, rule_sets[t.name])
                for t in settings.targets
            ]
        )
        listener = await server.serve(
            settings.listen,
            recorder,
            operators=operators,
            status=status,
            readiness=readiness,
            orders=intake,
            alertmanager_token=secrets.alertmanager_token,
            channels=approval_channels(secrets),
            fleet=fleet,
        )
        resources.push_async_callback(listener.close)
        if settings.slack is not None and settings.slack.socket_mode and secrets.slack_app_token:
            socket = slack.SocketModeListener(
                app_token=secrets.slack_app_token,
                bot_token=secrets.slack_bot_token or "",
                on_interaction=intake.interaction,
                api_url=settings.slack.api_url,
            )
            await socket.start()
            resources.push_async_callback(socket.aclose)
        links = {executor: ManagerLink(settings, executor) for executor in managers(settings)}
        for link in links.values():
            resources.push_async_callback(link.aclose)
        runs: set[asyncio.Task[runbook.Outcome | None]] = set()
        resources.push_async_callback(_cancel, runs)
        for link in links.values():
            await link.connect()
        targets = []
        reconciled: dict[str, runbook.Outcome | None] = {}  # runs finished at start
        probers: list[probes.Prober] = []
        policy = settings.policy.to_policy()
        for target_settings in settings.targets:
            state = await asyncio.to_thread(store.target_state, target_settings.name)
            target = pipeline.Target(
                settings=target_settings,
                rules=rule_sets[target_settings.name],
                policy=policy,
                mode=settings.mode,
                source=source,
                store=store,
                recorder=recorder,
                state=state,
                clock=clock,
                gatekeeper=gatekeeper,
                alerts_forget_after=settings.alertmanager.forget_after,
            )
            if target_settings.watch.enabled:
                target.watch = systemd_watch.SystemdWatch(target_settings)
            if target_settings.baseline.metrics and isinstance(source, prometheus.PrometheusSource):
                target.comparator = baseline.Comparator(target_settings, policy.warmup, source)
            if target_settings.probes.enabled:
                secret = passwords[target_settings.name]
                prober = probes.Prober.for_profile(target_settings, secret=secret)
                resources.push_async_callback(prober.aclose)
                probers.append(prober)
            if (connection := links[target_settings.executor].connection()) is not None:
                reconciled[target_settings.name] = await _reconcile(
                    target, connection, settings, clock, stop
                )
            await _warm_start(target, settings, clock())
            targets.append(target)
        guards += [
            Guard(
                t,
                links[t.settings.executor],
                settings,
                runs,
                clock,
                recorder,
                halt=stop,
                password=passwords.get(t.name, ""),
                gatekeeper=gatekeeper,
                fleet=fleet,
            )
            for t in targets
        ]
        resources.push_async_callback(_stop_watching, guards)  # before the gate and journal
        for guard in guards:
            if (outcome := reconciled.get(guard.target.name)) is not None:
                guard.resumed_run_ended(outcome)  # its report, its message, the watch after
            gatekeeper.attach(guard.target.name, guard)  # approved and ordered runs
            if settings.mode is model.Mode.AUTO:  # the one way in: through the gate
                guard.target.launch = gatekeeper.launcher(guard.target.name)
            guard.target.fleet = fleet  # asked only when acting; told what fires every tick
            await guard.read_units()  # the first tick sees systemd, not "no reading yet"
        if fleet is not None:
            fleet.attach(guards, gatekeeper)
            gatekeeper.fleet = fleet
            await fleet.beat()  # a member (and its lease) before the first tick asks for a slot
        log.info(
            "started",
            mode=settings.mode.value,
            targets=[t.name for t in targets],
            prometheus=settings.prometheus.url if settings.prometheus.enabled else "off",
            listen=f"http://{settings.listen.host}:{listener.port}",
            operator_api=f"on ({', '.join(o.name for o in operators)})"
            if operators
            else "off (no listen.operators or listen.token_file / token_env)",
            alertmanager="on" if secrets.alertmanager_token else "off (no alertmanager.token_*)",
            slack=_slack_state(settings, secrets),
            journal=str(store.path),
            **{
                link.executor: "connected" if link.connection() is not None else "not connected"
                for link in links.values()
            },
            fleet="off"
            if fleet is None
            else f"group {fleet.group} as {fleet.settings.node}"
            + ("" if fleet.reachable else " (store unreachable: local evidence only)"),
        )
        if started is not None:
            started(Running(targets=targets, listen_port=listener.port, journal=store))
        supervisor = sdnotify.SystemdNotifier()
        resources.callback(supervisor.stopping)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    _heartbeat(supervisor, store, guards, live, stop), name="sd-notify"
                )
                if config_path is not None:
                    reloader = Reloader(config_path, live, guards, gatekeeper, supervisor)
                    group.create_task(reloader.serve(reload, stop), name="reload")
                for link in links.values():
                    group.create_task(link.keep(stop), name=f"{link.executor}-link")
                if fleet is not None:
                    group.create_task(fleet.keep(stop), name="fleet-heartbeat")
                    group.create_task(fleet.listen(stop), name="fleet-listen")
                group.create_task(
                    _housekeeping(store, recorder, intake, live, clock, stop), name="housekeeping"
                )
                for guard in guards:
                    group.create_task(guard.loop(stop), name=f"loop:{guard.target.name}")
                    if guard.target.watch is not None:
                        group.create_task(guard.watch(stop), name=f"watch:{guard.target.name}")
                        group.create_task(
                            guard.follow_changes(stop), name=f"changes:{guard.target.name}"
                        )
                for prober in probers:
                    group.create_task(
                        _probe(prober, recorder, store, clock, stop),
                        name=f"probes:{prober.target}",
                    )
                await stop.wait()
        finally:  # stopped, or a task failed: a run in flight still pauses at a safe point
            stop.set()
            if runs:  # it finishes its step (or the stop/start pair), then pauses
                log.warning("stopping: letting the rollback in flight reach a safe point")
                supervisor.stopping("stopping: the rollback in flight pauses at a safe point")
                await asyncio.wait(list(runs), timeout=_longest_step(settings))


async def _fleet(
    settings: config.Settings,
    secrets: Secrets,
    recorder: telemetry.Recorder,
    clock: Callable[[], float],
) -> FleetLink | None:
    """Fleet mode's link, connected (or cut off: it keeps trying); None when it is off."""
    if settings.fleet is None or secrets.fleet_dsn is None:
        return None
    from watchdog.runtime.fleet import FleetLink  # psycopg only in fleet mode

    link = FleetLink(settings.fleet, secrets.fleet_dsn, recorder, clock)
    try:
        await link.open()
    except BaseException:
        await link.close()
        raise
    return link


def _notifiers(
    settings: config.Settings, secrets: Secrets, store: journal.Journal
) -> notify.Notifier:
    """Every configured channel behind one notifier (``Silent`` when there is none)."""
    channels: list[notify.Notifier] = []
    if settings.slack is not None and secrets.slack_bot_token:
        channels.append(
            slack.SlackNotifier(
                token=secrets.slack_bot_token,
                channel=settings.slack.channel,
                refs=store,
                api_url=settings.slack.api_url,
                timeout=settings.slack.timeout,
                retries=settings.slack.retries,
            )
        )
    for hook, token in zip(settings.notify.webhooks, secrets.webhook_tokens, strict=True):
        channels.append(webhook.WebhookNotifier(hook.url, token=token, timeout=hook.timeout))
    grafana_settings = settings.notify.grafana
    if grafana_settings is not None and secrets.grafana_token:
        channels.append(
            grafana.GrafanaAnnotator(
                grafana_settings.url,
                token=secrets.grafana_token,
                dashboard_uid=grafana_settings.dashboard_uid,
                tags=grafana_settings.tags,
                timeout=grafana_settings.timeout,
            )
        )
    if not channels:
        return notify.Silent()
    return channels[0] if len(channels) == 1 else notify.Fanout(channels)


def _slack_state(settings: config.Settings, secrets: Secrets) -> str:
    if settings.slack is None:
        return "off"
    clicks = "socket mode" if settings.slack.socket_mode else "HTTP interactions"
    if not settings.slack.socket_mode and not secrets.slack_signing_secret:
        clicks = "no buttons (no signing secret, no socket mode)"
    return f"channel {settings.slack.channel}, {clicks}"


async def _cancel(runs: set[asyncio.Task[runbook.Outcome | None]]) -> None:
    """Cancel the runs still going at shutdown (the next start reconciles them)."""
    for task in list(runs):
        task.cancel()
    if runs:
        await asyncio.wait(list(runs), timeout=10.0)


def approval_channels(secrets: Secrets) -> tuple[channel.Channel, ...]:
    """The approval channels' inbound halves (the factory): Slack, off without its secret."""
    return (slack.SlackChannel(secrets.slack_signing_secret or ""),)


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event, reload: asyncio.Event | None = None) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    handlers = [(signal.SIGTERM, stop.set), (signal.SIGINT, stop.set)]
    if reload is not None:
        handlers.append((signal.SIGHUP, reload.set))
    for signum, handler in handlers:
        try:
            loop.add_signal_handler(signum, handler)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
