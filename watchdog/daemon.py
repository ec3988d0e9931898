"""Wiring and supervision: build everything from the settings, run one loop per target.

The shape follows kopf's reactor: root tasks in an ``asyncio.TaskGroup``, a stop event set by
SIGTERM/SIGINT, and every tick bounded by a timeout so a hung Prometheus never stalls the loop.
A tick that fails is logged and counted, and the loop goes on: the watchdog must keep watching
when its sources misbehave -- and with no data it reports ``inconclusive``, it never acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog

from watchdog import (
    approval,
    backtest,
    config,
    configcheck,
    credentials,
    errors,
    gate,
    journal,
    logs,
    model,
    notify,
    pipeline,
    report,
    rules,
    sdnotify,
    server,
    sources,
    statedir,
    telemetry,
    timefmt,
)
from watchdog.executor import after, runbook
from watchdog.executor.systemd import Systemd, SystemdError
from watchdog.notify import channel, grafana, slack, webhook
from watchdog.sources import alertmanager, probes, prometheus, systemd_watch

log = structlog.get_logger("watchdog.daemon")


@dataclass(slots=True)
class Live:
    """The settings in force: those of the start, or of the last reload that was taken."""

    settings: config.Settings


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


@dataclass(frozen=True, slots=True, repr=False)  # never printed, not even in a traceback
class Secrets:
    """Every secret the daemon needs, read once at start (a missing one changes nothing)."""

    operators: tuple[credentials.Identity, ...]  # the operator API's: each token names a person
    alertmanager_token: str | None
    passwords: dict[str, str]  # each target's service secret (Lavalink's password)
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    webhook_tokens: tuple[str | None, ...] = ()  # one per notify.webhooks entry
    grafana_token: str | None = None

    @classmethod
    def read(cls, settings: config.Settings) -> Secrets:
        read = credentials.read_secret
        slack = settings.slack
        return cls(
            operators=_operators(settings.listen),
            alertmanager_token=read(
                settings.alertmanager.token_file,
                settings.alertmanager.token_env,
                "Alertmanager webhook token",
            ),
            passwords={
                t.name: credentials.service_secret(t.runbook.password_file, t.runbook.password_env)
                for t in settings.targets
            },
            slack_bot_token=read(slack.bot_token_file, slack.bot_token_env, "Slack bot token")
            if slack
            else None,
            slack_signing_secret=read(
                slack.signing_secret_file, slack.signing_secret_env, "Slack signing secret"
            )
            if slack
            else None,
            slack_app_token=read(slack.app_token_file, slack.app_token_env, "Slack app token")
            if slack and slack.socket_mode
            else None,
            webhook_tokens=tuple(
                read(hook.token_file, hook.token_env, f"webhook token for {hook.url}")
                for hook in settings.notify.webhooks
            ),
            grafana_token=read(annotate.token_file, annotate.token_env, "Grafana token")
            if (annotate := settings.notify.grafana) is not None
            else None,
        )

    def __post_init__(self) -> None:
        for operator in self.operators:  # one credential, one use: Alertmanager never votes
            if self.alertmanager_token and credentials.same_token(
                operator.token, self.alertmanager_token
            ):
                raise errors.ConfigError(
                    f"the Alertmanager webhook token is also operator {operator.name}'s: "
                    "give each its own"
                )

    def values(self) -> list[str | None]:
        """Every secret, for the log's redaction."""
        return [
            *(operator.token for operator in self.operators),
            self.alertmanager_token,
            *self.passwords.values(),
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            *self.webhook_tokens,
            self.grafana_token,
        ]


def _operators(listen: config.ListenSettings) -> tuple[credentials.Identity, ...]:
    """Each operator's token, named; two operators with one token could not be told apart."""
    found = []
    shared = credentials.read_secret(listen.token_file, listen.token_env, "operator API token")
    if shared is not None:
        found.append(credentials.Identity(listen.token_name, shared))
    for operator in listen.operators:
        token = credentials.read_secret(
            operator.token_file, operator.token_env, f"operator token of {operator.name}"
        )
        found.append(credentials.Identity(operator.name, token or ""))
    for index, one in enumerate(found):
        for other in found[index + 1 :]:
            if credentials.same_token(one.token, other.token):
                raise errors.ConfigError(
                    f"operators {one.name} and {other.name} have the same token: "
                    "each needs their own, or the token cannot say who it is"
                )
    return tuple(found)


class Intake:
    """What the listener hands its validated requests to (``server.Orders``): alerts go to the
    journal and wake the evaluation, votes and orders go to the gate."""

    def __init__(
        self,
        gatekeeper: gate.Gate,
        guards: list[Guard],
        recorder: telemetry.Recorder,
        clock: Callable[[], float],
    ) -> None:
        self._gate = gatekeeper
        self._guards = guards
        self._recorder = recorder
        self._clock = clock
        self._starting: list[alertmanager.Destination] = []
        # unrouted and dropped alerts: the first of each name logged, the rest counted
        self._alert_tally = logs.Tally("alerts not taken", log=log.info)

    def route_before_start(self, destinations: Sequence[alertmanager.Destination]) -> None:
        """Where alerts go until the loops exist (the listener opens first)."""
        self._starting = list(destinations)

    def flush(self) -> None:
        """Log what was counted of alerts not taken (the heartbeat calls it now and then)."""
        self._alert_tally.flush()

    async def ingest(self, delivery: alertmanager.Delivery) -> None:
        """Keep the alerts routed to a target (and wake its evaluation if one is new), and
        the unrouted ones apart, each with its reason: never a decision."""
        destinations = [
            alertmanager.Destination(
                g.target.name, g.target.settings.alert_matchers, g.target.rules
            )
            for g in self._guards
        ] or self._starting
        if delivery.truncated_alerts:
            log.warning(
                "Alertmanager left alerts out of a notification (max_alerts)",
                truncated=delivery.truncated_alerts,
            )
        routed, unrouted = alertmanager.route(delivery, destinations)
        at = self._clock()
        settings = self._gate.settings.alertmanager
        store = self._gate.store
        ingested = await asyncio.to_thread(
            store.ingest_alerts,
            [_record(r) for r in routed],
            at=at,
            limit=settings.max_alerts,
            forget_before=at - settings.forget_after,
        )
        let_go = await asyncio.to_thread(
            store.record_unrouted,
            [_unrouted_record(u) for u in unrouted],
            at=at,
            limit=settings.max_alerts,
        )
        recorder = self._recorder
        recorder.alerts.labels("new").inc(len(ingested.new_firing))
        recorder.alerts.labels("repeated").inc(ingested.repeated)
        recorder.alerts.labels("resolved").inc(ingested.resolved)
        for reason in model.Unrouted:
            count = sum(1 for u in unrouted if u.reason is reason)
            if count:
                recorder.alerts_unrouted.labels(reason.value).inc(count)
        if ingested.dropped:
            recorder.alerts_dropped.labels("routed").inc(ingested.dropped)
            self._alert_tally.add(f"routed alerts dropped: {settings.max_alerts} already kept")
        if let_go:
            recorder.alerts_dropped.labels("unrouted").inc(let_go)
        for one in unrouted:  # keyed by reason only: names are the sender's, and unbounded
            self._alert_tally.add(f"unrouted alerts ({one.reason.value}; see status)")
        fresh = {alert.target for alert in ingested.new_firing}
        if fresh:
            log.warning(
                "alerts from Alertmanager",
                new=[f"{a.target}/{a.alertname}" for a in ingested.new_firing][:10],
                repeated=ingested.repeated,
                resolved=ingested.resolved,
            )
        for guard in self._guards:
            if guard.target.name in fresh:
                guard.wake()

    async def click(self, click: channel.Click) -> None:
        """An approval channel's click, as a vote of the person the channel names."""
        vote = approval.Vote(
            approve=click.approve, identities=(click.identity,), via=click.via, at=self._clock()
        )
        ruling, _ = await self._gate.vote(click.approval, vote, nonce=click.nonce)
        self._count(ruling, click.via)

    async def interaction(self, interaction: slack.Interaction) -> None:
        """A Slack click that came over Socket Mode (no HTTP request to verify)."""
        await self.click(interaction.click())

    async def vote(
        self, approval_id: int, vote: approval.Vote, nonce: str | None
    ) -> tuple[approval.Ruling, dict[str, Any] | None]:
        ruling, row = await self._gate.vote(approval_id, vote, nonce=nonce)
        self._count(ruling, vote.via)
        if row is None:
            return ruling, None
        return ruling, {**dataclasses.asdict(row), "approved_by": list(row.approvers)}

    async def rollback(self, order: gate.RollbackOrder) -> approval.Answer:
        return await self._gate.rollback(order)

    async def incident(self, incident_id: int) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._gate.store.incident_report, incident_id)

    def _count(self, ruling: approval.Ruling, via: str) -> None:
        result = "counted" if ruling.refusal is None else ruling.refusal.value
        self._recorder.votes.labels(via, result).inc()


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


def _record(routed: alertmanager.Routed) -> journal.AlertRecord:
    return journal.AlertRecord(
        fingerprint=routed.alert.fingerprint,
        starts_at=routed.alert.starts_at,
        target=routed.target,
        alertname=routed.rule.name,
        status=routed.alert.status,
        labels=routed.alert.labels,
        annotations=routed.alert.annotations,
    )


def _unrouted_record(unrouted: alertmanager.Unrouted) -> journal.UnroutedRecord:
    return journal.UnroutedRecord(
        fingerprint=unrouted.alert.fingerprint,
        starts_at=unrouted.alert.starts_at,
        alertname=unrouted.alert.name,
        status=unrouted.alert.status,
        reason=unrouted.reason,
        detail=unrouted.detail,
        labels=unrouted.alert.labels,
        target=unrouted.target,
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
        guards: list[Guard] = []
        live = Live(settings)  # a reload replaces it

        async def status() -> dict[str, Any]:
            names = [t.name for t in settings.targets]
            return {
                "mode": live.settings.mode.value,
                "targets": await asyncio.to_thread(store.status, names),
                "unrouted_alerts": await asyncio.to_thread(store.unrouted_status),
            }

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
        link = SystemdLink(settings)
        resources.callback(link.close)
        runs: set[asyncio.Task[runbook.Outcome | None]] = set()
        resources.push_async_callback(_cancel, runs)
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
            if target_settings.probes.enabled:
                secret = passwords[target_settings.name]
                prober = probes.Prober.for_profile(target_settings, secret=secret)
                resources.push_async_callback(prober.aclose)
                probers.append(prober)
            if (connection := link.connection()) is not None:
                reconciled[target_settings.name] = await _reconcile(
                    target, connection, settings, clock, stop
                )
            await _warm_start(target, settings, clock())
            targets.append(target)
        guards += [
            Guard(
                t,
                link,
                settings,
                runs,
                clock,
                recorder,
                halt=stop,
                password=passwords.get(t.name, ""),
                gatekeeper=gatekeeper,
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
            await guard.read_units()  # the first tick sees systemd, not "no reading yet"
        log.info(
            "started",
            mode=settings.mode.value,
            targets=[t.name for t in targets],
            prometheus=settings.prometheus.url,
            listen=f"http://{settings.listen.host}:{listener.port}",
            operator_api=f"on ({', '.join(o.name for o in operators)})"
            if operators
            else "off (no listen.operators or listen.token_file / token_env)",
            alertmanager="on" if secrets.alertmanager_token else "off (no alertmanager.token_*)",
            slack=_slack_state(settings, secrets),
            journal=str(store.path),
            systemd="connected" if link.connection() is not None else "not connected",
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
                group.create_task(link.keep(stop), name="systemd-link")
                group.create_task(
                    _housekeeping(store, recorder, intake, live, clock, stop), name="housekeeping"
                )
                for guard in guards:
                    group.create_task(guard.loop(stop), name=f"loop:{guard.target.name}")
                    if guard.target.watch is not None:
                        group.create_task(guard.watch(stop), name=f"watch:{guard.target.name}")
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


async def _stop_watching(guards: list[Guard]) -> None:
    for guard in guards:
        await guard.stop_watching()


def _slack_state(settings: config.Settings, secrets: Secrets) -> str:
    if settings.slack is None:
        return "off"
    clicks = "socket mode" if settings.slack.socket_mode else "HTTP interactions"
    if not settings.slack.socket_mode and not secrets.slack_signing_secret:
        clicks = "no buttons (no signing secret, no socket mode)"
    return f"channel {settings.slack.channel}, {clicks}"


async def _heartbeat(
    supervisor: sdnotify.SystemdNotifier,
    store: journal.Journal,
    guards: list[Guard],
    live: Live,
    stop: asyncio.Event,
) -> None:
    """Tell systemd: READY once every loop has ticked, then STATUS with the verdicts, and
    WATCHDOG=1 only while the journal answers and every loop makes progress -- a wedged
    daemon stops pinging and ``WatchdogSec=`` restarts it."""
    if not supervisor.enabled:
        return
    # WatchdogSec/3 (the interval given is half of it): a late ping still lands in time
    every = supervisor.watchdog_interval * 2 / 3 if supervisor.watchdog_interval else 5.0
    announced = False
    while not stop.is_set():
        settings = live.settings
        dead = await _liveness(store, guards, settings)
        problem = dead if dead is not None else await asyncio.to_thread(store.intact)
        status = f"mode {settings.mode.value}; " + ", ".join(
            f"{g.target.name}: {g.verdict}" for g in guards
        )
        if problem is None:
            if not announced:
                announced = supervisor.ready(status)
            else:
                supervisor.status(status)
        elif announced or not problem.startswith("starting"):
            supervisor.status(f"{status}; not healthy: {problem}")
        if dead is None and announced and supervisor.watchdog_interval is not None:
            supervisor.alive()
        await _pause(stop, every)


HOUSEKEEPING_EVERY = 60.0  # seconds between checks of the journal file, and tally flushes
PRUNE_EVERY = 86400.0  # seconds between two prunings of the journal


async def _housekeeping(
    store: journal.Journal,
    recorder: telemetry.Recorder,
    intake: Intake,
    live: Live,
    clock: Callable[[], float],
    stop: asyncio.Event,
) -> None:
    """Every minute: is the journal file still ours (a metric; the journal logs the loss once),
    and what was counted of alerts not taken. Once a day, from the start: prune what is older
    than ``journal.retention`` (verdict changes and alerts; never incidents, runs, approvals)."""
    pruned_at: float | None = None
    while not stop.is_set():
        try:
            lost = await asyncio.to_thread(store.intact)
            recorder.journal_intact.set(0 if lost else 1)
            intake.flush()
            now = time.monotonic()
            if lost is None and (pruned_at is None or now - pruned_at >= PRUNE_EVERY):
                pruned_at = now
                before = clock() - live.settings.journal.retention
                pruned = await asyncio.to_thread(store.prune, before)
                if any(pruned.values()):
                    log.info("journal pruned", older_than=timefmt.format_instant(before), **pruned)
        except Exception:  # housekeeping outlives any one bad round
            log.exception("journal housekeeping failed")
        await _pause(stop, HOUSEKEEPING_EVERY)


LIVE_SETTINGS = ("mode", "interval", "policy", "approval", "alertmanager.forget_after", "rules")
"""What a reload changes in the running daemon; anything else takes a restart."""


class Reloader:
    """SIGHUP: read the config file and every rules file again and swap them in at once.

    All or nothing: a file that does not load is rejected with a log line naming the problem,
    and the running settings stay as they were. Only ``LIVE_SETTINGS`` change live (each
    target's rules included); a change anywhere else (targets, listen, state_dir, secrets' paths,
    slack) is reported as needing a restart and left as it was.
    """

    def __init__(
        self,
        path: Path,
        live: Live,
        guards: list[Guard],
        gatekeeper: gate.Gate,
        supervisor: sdnotify.SystemdNotifier,
    ) -> None:
        self.path = path
        self._live = live
        self._guards = guards
        self._gate = gatekeeper
        self._supervisor = supervisor

    async def serve(self, reload: asyncio.Event, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _pause(stop, 3600.0, wake=reload)
            if reload.is_set():
                reload.clear()
                self._supervisor.reloading()
                taken = await self.reload()
                mode = self.settings.mode.value
                outcome = "reloaded" if taken else "reload rejected: the running config stays"
                self._supervisor.ready(f"mode {mode}; {outcome}")

    @property
    def settings(self) -> config.Settings:
        return self._live.settings

    async def reload(self) -> bool:
        """One reload; True if the new files were taken. The files are read in a thread; the
        swap happens on the event loop in one go, so no tick sees half of it."""
        try:
            new, loaded = await asyncio.to_thread(self._read)
        except Exception as exc:  # any file that does not load, however: the old one stays
            why = str(exc) if isinstance(exc, errors.InputError | OSError) else repr(exc)
            log.error("reload rejected; the running config stays", file=str(self.path), error=why)  # noqa: TRY400 - the message is the point
            return False
        self._apply(new, loaded)
        return True

    def _read(self) -> tuple[config.Settings, dict[str, Sequence[model.Rule]]]:
        new = config.load(self.path)
        return new, {t.name: rules.load(t.rules, t.rule_variables).rules for t in new.targets}

    def _apply(self, new: config.Settings, loaded: dict[str, Sequence[model.Rule]]) -> None:
        old = self.settings
        restart = _restart_only_changes(old, new)
        if restart:
            log.warning("reload: these changes need a restart and were not applied", keys=restart)
        live = old.model_copy(
            update={
                "mode": new.mode,
                "interval": new.interval,
                "policy": new.policy,
                "approval": new.approval,
                "alertmanager": old.alertmanager.model_copy(
                    update={"forget_after": new.alertmanager.forget_after}
                ),
            }
        )
        self._gate.reconfigure(live)
        policy = live.policy.to_policy()
        for guard in self._guards:
            target = guard.target
            target.rules = loaded.get(target.name, target.rules)
            target.policy = policy
            target.mode = live.mode
            target.alerts_forget_after = live.alertmanager.forget_after
            keeper = target.gatekeeper
            auto = live.mode is model.Mode.AUTO and keeper is not None
            target.launch = keeper.launcher(target.name) if auto and keeper else None
            guard.reconfigure(live)
        self._live.settings = live
        log.warning(
            "reloaded",
            file=str(self.path),
            mode=live.mode.value,
            rules={name: len(found) for name, found in loaded.items()},
        )


def _restart_only_changes(old: config.Settings, new: config.Settings) -> list[str]:
    """Top-level keys (and target fields) that changed but only take effect at a restart."""
    changed = []
    live_top = {"mode", "interval", "policy", "approval", "alertmanager", "targets"}
    for key in type(old).model_fields:
        if key not in live_top and getattr(old, key) != getattr(new, key):
            changed.append(key)
    if old.alertmanager.model_copy(update={"forget_after": 0}) != new.alertmanager.model_copy(
        update={"forget_after": 0}
    ):
        changed.append("alertmanager")
    if [t.name for t in old.targets] != [t.name for t in new.targets]:
        changed.append("targets (names)")
    else:
        for before, after in zip(old.targets, new.targets, strict=True):
            if before.model_copy(update={"rules": []}) != after.model_copy(update={"rules": []}):
                changed.append(f"targets.{before.name}")
    return changed


async def _cancel(runs: set[asyncio.Task[runbook.Outcome | None]]) -> None:
    """Cancel the runs still going at shutdown (the next start reconciles them)."""
    for task in list(runs):
        task.cancel()
    if runs:
        await asyncio.wait(list(runs), timeout=10.0)


async def _readiness(
    store: journal.Journal, guards: list[Guard], settings: config.Settings
) -> str | None:
    """Ready: alive (``_liveness``) and the journal file still the one opened at start."""
    problem = await _liveness(store, guards, settings)
    if problem is not None:
        return problem
    return await asyncio.to_thread(store.intact)


async def _liveness(
    store: journal.Journal, guards: list[Guard], settings: config.Settings
) -> str | None:
    """Alive: the journal answers and every evaluation loop ticked within three intervals
    (plus the tick's own budget). A journal file deleted under the daemon is not ready, but
    alive: systemd must not kill it in the middle of a run it can no longer resume."""
    if not guards:
        return "starting"
    if not await asyncio.to_thread(store.healthy):
        return "the journal does not answer"
    allowed = 3 * settings.interval + source_budget(settings)
    for guard in guards:
        since = guard.since_last_tick()
        if since is None:
            return f"starting: {guard.target.name} has not been evaluated yet"
        if since > allowed:
            return f"the evaluation loop of {guard.target.name} has not ticked for {allowed:g}s"
    return None


def _longest_step(settings: config.Settings) -> float:
    """How long a run can take to reach its next safe point: the stop/start pair (two systemd
    jobs) or the verification, plus some slack -- what ``TimeoutStopSec=`` must allow."""
    return max(
        max(2 * t.runbook.job_timeout, t.runbook.verify.timeout + t.runbook.verify.settle) + 15
        for t in settings.targets
    )


RECONNECT_EVERY = 30.0  # seconds between attempts to reach a lost systemd
WAKE_GAP = 1.0  # seconds: the least time between two evaluations woken early
SILENT_READS = 3  # unanswered watch reads in a row before the connection is made again


class SystemdLink:
    """The daemon's one systemd connection: made at start, made again whenever it is lost.

    Without it the watchdog still evaluates (the crash-loop signal then reads ``error``), but
    cannot act: auto mode journals "no executor is connected" and asks again every tick until
    the link is back.
    """

    def __init__(self, settings: config.Settings) -> None:
        self._settings = settings
        self._client: Systemd | None = None
        self._complained = False
        self._unanswered = 0  # reads in a row that systemd did not answer at all

    def connection(self) -> Systemd | None:
        """The connection, if it is up (a dropped one is closed and forgotten here)."""
        if self._client is not None and not self._client.connected:
            log.error("systemd connection lost; reconnecting")
            self._drop()
        return self._client

    def answered(self, *, at_all: bool) -> None:
        """What the watch saw: a bus that stays connected but never answers is as good as
        gone, so after ``SILENT_READS`` silent reads it is dropped and made again."""
        self._unanswered = 0 if at_all else self._unanswered + 1
        if self._unanswered >= SILENT_READS and self._client is not None:
            log.error("systemd stopped answering; reconnecting", silent_reads=self._unanswered)
            self._drop()

    def _drop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None
        self._unanswered = 0

    async def connect(self) -> bool:
        """One bounded attempt (the client tries a silent bus a few times itself)."""
        settings = self._settings
        job_timeout = max(t.runbook.job_timeout for t in settings.targets)
        try:
            self._client = await Systemd.connect(settings.systemd.bus, call_timeout=job_timeout)
        except SystemdError as exc:
            if not self._complained:  # once per outage, not every attempt
                self._complained = True
                if settings.mode is model.Mode.AUTO:
                    log.error("systemd unreachable: rollbacks cannot run", error=str(exc))  # noqa: TRY400
                else:
                    log.warning("systemd unreachable", error=str(exc))
            return False
        self._complained = False
        log.info("connected to systemd", bus=settings.systemd.bus)
        return True

    async def keep(self, stop: asyncio.Event) -> None:
        """Reconnect whenever the connection is gone, until stopped."""
        while not stop.is_set():
            if self.connection() is None:
                await self.connect()
            await _pause(stop, RECONNECT_EVERY if self._client is None else 1.0)

    def close(self) -> None:
        self._drop()


async def _reconcile(
    target: pipeline.Target,
    systemd: Systemd,
    settings: config.Settings,
    clock: Callable[[], float],
    halt: asyncio.Event,
) -> runbook.Outcome | None:
    """Finish or close a run a crash left unfinished, then re-read what it changed."""
    log.info("reconciling", target=target.name)
    outcome = await runbook.reconcile(
        target.settings, target.store, systemd, settings.state_dir, clock=clock, halt=halt
    )
    if outcome is not None:
        log.warning(
            "reconciled",
            target=target.name,
            run=outcome.run_id,
            status=outcome.status,
            detail=outcome.detail,
        )
        target.state = await asyncio.to_thread(target.store.target_state, target.name)
    return outcome


class Guard:
    """One target's loops: evaluate every ``interval``, read systemd every watch interval, and
    start (or adopt) the runbook as its own task so evaluation keeps ticking while it runs. A
    crash loop newly seen on D-Bus wakes the evaluation at once rather than at the next tick."""

    def __init__(
        self,
        target: pipeline.Target,
        link: SystemdLink,
        settings: config.Settings,
        runs: set[asyncio.Task[runbook.Outcome | None]],
        clock: Callable[[], float],
        recorder: telemetry.Recorder,
        *,
        halt: asyncio.Event | None = None,  # the daemon's stop: runs pause at a safe point
        password: str = "",  # the service's secret, for the watch after a rollback
        gatekeeper: gate.Gate | None = None,
    ) -> None:
        self.target = target
        self._password = password
        self._gatekeeper = gatekeeper
        self._after: set[asyncio.Task[None]] = set()
        self._ticked_at: float | None = None  # monotonic, for readiness
        self.verdict = "starting"  # the last verdict, for systemd's STATUS=
        self._halt = halt
        self._wake = asyncio.Event()  # wakes the loop for an evaluation now (crash loop, alert)
        self._crash_looping = False
        self._link = link
        self._settings = settings
        self._runs = runs
        self._clock = clock
        self._recorder = recorder

    def _task(self, kind: str) -> asyncio.Task[runbook.Outcome | None] | None:
        """This target's run task of ``kind`` (``rollback`` or ``reconcile``) in flight here."""
        name = f"{kind}:{self.target.name}"
        return next((task for task in self._runs if task.get_name() == name), None)

    def wake(self) -> None:
        """Evaluate now rather than at the next tick (news that cannot wait)."""
        self._wake.set()

    def reconfigure(self, settings: config.Settings) -> None:
        """Settings swapped in by a reload (the next tick uses them)."""
        self._settings = settings

    def since_last_tick(self) -> float | None:
        """Seconds since the evaluation loop last went round (None before its first tick)."""
        return None if self._ticked_at is None else time.monotonic() - self._ticked_at

    def in_flight(self) -> bool:
        """Whether this target's rollback runs here now (``gate.Launcher``)."""
        return self._task("rollback") is not None

    def blocked(self) -> str | None:
        """Why a rollback cannot start now, or None (``gate.Launcher``)."""
        if self._task("rollback") is not None:
            return None  # it joins the run in flight
        if self._halt is not None and self._halt.is_set():
            return "the watchdog is stopping"
        if self._task("reconcile") is not None:
            return "an interrupted run is being reconciled first"
        if self._link.connection() is None:
            return "no executor is connected"
        return None

    def __call__(self, order: gate.Order) -> model.Launched:
        """Start the runbook for an order (``gate.Launcher``), or join the run in flight."""
        if self._task("rollback") is not None:
            return model.Launched(model.Launch.JOINED)
        systemd = self._link.connection()
        if systemd is None or self._task("reconcile") is not None:
            return model.Launched(model.Launch.REFUSED, self.blocked() or "")
        self._start(
            "rollback",
            runbook.start_run(
                self.target.settings,
                self.target.store,
                systemd,
                self._settings.state_dir,
                trigger=order.trigger,
                initiated_by=order.initiated_by,
                reason=order.reason,
                incident_id=order.incident,
                clock=self._clock,
                observer=self._timed(order.observer),
                halt=self._halt,
            ),
            on_end=self._ended(order),
        )
        return model.Launched(model.Launch.STARTED)

    def _ended(self, order: gate.Order) -> Callable[[runbook.Outcome], None]:
        """At the run's end: tell the order's observer, then watch the fallback a while."""

        def ended(outcome: runbook.Outcome) -> None:
            if order.on_end is not None:
                order.on_end(outcome)
            self._after_run(outcome, order.incident)

        return ended

    def resumed_run_ended(self, outcome: runbook.Outcome) -> None:
        """A run resumed or closed by a reconcile ended: the same ending as any run's."""

        async def end() -> None:
            run = await asyncio.to_thread(self.target.store.run, outcome.run_id)
            if self._gatekeeper is not None:
                await self._gatekeeper.note(
                    run.incident_id,
                    f"run #{outcome.run_id} {outcome.status} (resumed)",
                    status=f"Rollback {outcome.status}: {outcome.detail}",
                    final=outcome.status is not model.RunStatus.INTERRUPTED,
                )
            self._after_run(outcome, run.incident_id)

        self._spawn(end())

    def _after_run(self, outcome: runbook.Outcome, incident: int | None) -> None:
        """A run that ended (not one paused for shutdown): its report, and the watch after."""
        if outcome.status is model.RunStatus.INTERRUPTED:  # still open: its end comes later
            return
        self._spawn(self._report(outcome.run_id, incident, post=True))
        if outcome.succeeded and self.target.settings.after.enabled:
            self._spawn(self._watch_after(outcome.run_id, incident))

    async def stop_watching(self) -> None:
        """At shutdown, before the journal closes: end the watch after a rollback."""
        for task in list(self._after):
            task.cancel()
        if self._after:
            await asyncio.wait(list(self._after), timeout=5.0)

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._after.add(task)
        task.add_done_callback(self._after.discard)

    async def _report(self, run_id: int, incident: int | None, *, post: bool) -> None:
        """Write the run's report (``state_dir/reports``) and, if asked, post it. Best effort:
        a report that cannot be written is logged, and ``report RUN`` can still print it."""
        try:
            path = await asyncio.to_thread(
                report.write, self.target.store, run_id, self._settings.state_dir
            )
        except Exception:
            log.exception("the rollback report could not be written", run=run_id)
            return
        log.info("rollback report written", run=run_id, path=str(path))
        if post and self._gatekeeper is not None:
            body = await asyncio.to_thread(path.read_text)
            await self._gatekeeper.attach_document(
                incident, f"Rollback report, run #{run_id}", body
            )

    async def _watch_after(self, run_id: int, incident: int | None) -> None:
        """For ``after.duration``: the fallback against the runbook's limits. An unhealthy
        fallback is an alert (log, metric, the incident's message), never a switch back."""
        settings = self.target.settings.after
        watch = after.AfterWatch(self.target.settings, self._password)
        gauge = self._recorder.fallback_healthy.labels(self.target.name)
        store, name = self.target.store, self.target.name
        deadline = time.monotonic() + settings.duration
        healthy = True
        stop = self._halt if self._halt is not None else asyncio.Event()
        log.info("watching the fallback", target=name, run=run_id, seconds=settings.duration)
        async with httpx.AsyncClient(timeout=10.0) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    found = await watch.check(self._link.connection(), client)
                except Exception:  # the watch outlives any one bad round
                    log.exception("fallback check failed", target=name)
                    found = []
                problems = [f"{c.name}: {c.detail}" for c in found if not c.ok]
                if found:
                    gauge.set(0 if problems else 1)
                if found and watch.checks == 1 and not problems:  # journaled from the start
                    await asyncio.to_thread(store.remember, run_id, "after", watch.summary())
                if watch.checks <= 3:  # the first passing probe on the fallback comes about now
                    await self._report(run_id, incident, post=False)
                if found and bool(problems) == healthy:  # it turned
                    healthy = not problems
                    if problems:
                        line = "fallback unhealthy too: " + "; ".join(problems)
                        log.error(line, target=name, run=run_id, switch_back="never automatic")
                    else:
                        line = "fallback healthy again"
                        log.warning(line, target=name, run=run_id)
                    await asyncio.to_thread(store.remember, run_id, "after", watch.summary())
                    if self._gatekeeper is not None:
                        await self._gatekeeper.note(incident, line)
                await _pause(stop, settings.interval)
        await asyncio.to_thread(store.remember, run_id, "after", watch.summary())
        if stop.is_set():  # cut short: say so, never "healthy through the watch"
            if self._gatekeeper is not None:
                await self._gatekeeper.note(
                    incident,
                    f"the watch after the rollback ended with the watchdog ({watch.checks} checks)",
                )
            return
        if self._gatekeeper is not None and healthy:
            await self._gatekeeper.note(
                incident, f"fallback healthy through the watch ({watch.checks} checks)"
            )
        await self._report(run_id, incident, post=True)  # the final version

    def _timed(self, observer: runbook.Observer | None) -> runbook.Observer:
        """The order's observer, plus each finished step's duration as a metric."""
        histogram = self._recorder.step_duration

        def observe(event: runbook.StepEvent) -> None:
            if event.status in ("ok", "failed"):
                histogram.labels(self.target.name, event.name).observe(event.seconds)
            if observer is not None:
                observer(event)

        return observe

    def _start(
        self,
        kind: str,
        work: Coroutine[object, object, runbook.Outcome | None],
        *,
        on_end: Callable[[runbook.Outcome], None] | None = None,
    ) -> None:
        task = asyncio.create_task(work, name=f"{kind}:{self.target.name}")
        self._runs.add(task)
        task.add_done_callback(_finished(self._runs, self.target, self._recorder, on_end))

    async def _adopt_orphan(self) -> None:
        """A run journaled as running with no task here was left by a dead process (or one
        whose lock was still held at start, or whose systemd connection dropped): reconcile it
        as a run of ours. A run a living process holds is left alone (its lock says so)."""
        systemd = self._link.connection()
        if systemd is None or self._task("rollback") or self._task("reconcile"):
            return
        orphan = await asyncio.to_thread(self.target.store.running_run, self.target.name)
        if orphan is None:
            return
        target = self.target
        self._start(
            "reconcile",
            runbook.reconcile(
                target.settings,
                target.store,
                systemd,
                self._settings.state_dir,
                clock=self._clock,
                halt=self._halt,
            ),
            on_end=self.resumed_run_ended,
        )

    async def loop(self, stop: asyncio.Event) -> None:
        """Tick every ``interval`` until stopped; a failed tick never ends the loop."""
        target = self.target
        while not stop.is_set():
            interval = self._settings.interval  # each time round: a reload may change them
            budget = source_budget(self._settings)
            begun = time.monotonic()
            self._wake.clear()  # this tick sees it; news during the tick wakes the next
            try:
                await self._adopt_orphan()
                async with asyncio.timeout(budget + 30.0):  # last resort: the tick bounds itself
                    decided = await target.tick(budget=budget)
                self.verdict = decided.verdict.value
            except TimeoutError:
                target.recorder.source_errors.labels(target.name, "tick_timeout").inc()
                log.error("tick timed out", target=target.name, budget_seconds=budget)  # noqa: TRY400 - no traceback to add
            except errors.JournalLost:  # logged once where found; nothing acts until a restart
                target.recorder.source_errors.labels(target.name, "journal_lost").inc()
            except Exception:  # the loop outlives any one bad tick
                target.recorder.source_errors.labels(target.name, "tick_failed").inc()
                log.exception("tick failed", target=target.name)
            self._ticked_at = time.monotonic()
            # news wakes the next tick early, but at most one tick per WAKE_GAP: a flood of
            # alerts must not turn the loop into a busy one
            await _pause(stop, min(interval, WAKE_GAP) - (time.monotonic() - begun))
            await _pause(stop, interval - (time.monotonic() - begun), wake=self._wake)

    async def read_units(self) -> None:
        """One reading of both units, exported; tells the link whether systemd answered."""
        watch = self.target.watch
        if watch is None:
            return
        connection = self._link.connection()
        readings = await watch.sample(connection, self._clock)
        if connection is not None:
            self._link.answered(at_all=not watch.unanswered)
        failed = sum(1 for reading in readings if reading.status is None)
        now = self._clock()
        self._recorder.record_units(self.target.name, watch.latest(now), failed_reads=failed)
        observed = watch.observe(now)
        if observed.ok:  # an unreadable moment says nothing: it neither starts nor ends one
            crash_loop = bool(observed.points)
            if crash_loop and not self._crash_looping:  # the most urgent signal: evaluate now
                log.warning("crash loop seen on D-Bus", target=self.target.name, unit=watch.primary)
                self.wake()
            self._crash_looping = crash_loop

    async def watch(self, stop: asyncio.Event) -> None:
        """Read both units every watch interval; export them for Prometheus."""
        watch = self.target.watch
        if watch is None:
            return
        while not stop.is_set():
            begun = time.monotonic()
            try:
                await self.read_units()
            except Exception:  # the watch outlives any one bad reading
                log.exception("systemd watch failed", target=self.target.name)
            await _pause(stop, watch.settings.interval - (time.monotonic() - begun))


async def _probe(
    prober: probes.Prober,
    recorder: telemetry.Recorder,
    store: journal.Journal,
    clock: Callable[[], float],
    stop: asyncio.Event,
) -> None:
    """One round of synthetic probes every probe interval; export what they saw, and journal
    when the service turns from passing to failing or back (the report's downtime)."""
    interval = prober.settings.interval
    while not stop.is_set():
        begun = time.monotonic()
        try:
            results = await prober.round()
            recorder.record_probes(prober.target, results)
            turn = probes.health(results)
            if turn is not None:
                healthy, detail = turn
                await asyncio.to_thread(
                    store.probe_change, prober.target, at=clock(), healthy=healthy, detail=detail
                )
        except Exception:  # the probes outlive any one bad round
            log.exception("probe round failed", target=prober.target)
        await _pause(stop, interval - (time.monotonic() - begun))


async def _pause(stop: asyncio.Event, seconds: float, *, wake: asyncio.Event | None = None) -> None:
    """Sleep up to ``seconds``, or less if stopped (or woken)."""
    events = [stop] if wake is None else [stop, wake]
    waiting = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiting, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


def _finished(
    runs: set[asyncio.Task[runbook.Outcome | None]],
    target: pipeline.Target,
    recorder: telemetry.Recorder,
    on_end: Callable[[runbook.Outcome], None] | None = None,
) -> Callable[[asyncio.Task[runbook.Outcome | None]], None]:
    def done(task: asyncio.Task[runbook.Outcome | None]) -> None:
        runs.discard(task)
        if task.cancelled():
            log.error("rollback cancelled at shutdown; the next start reconciles it")
        elif isinstance(task.exception(), journal.RunInFlight):
            log.warning(
                "rollback already in flight in another process", error=str(task.exception())
            )
        elif task.exception() is not None:
            log.error("rollback could not run", error=repr(task.exception()))
        elif (outcome := task.result()) is None:
            log.debug("run in flight belongs to a living process", target=target.name)
        else:
            recorder.record_run(target.name, outcome.status)
            log.warning(
                "rollback ended", run=outcome.run_id, status=outcome.status, detail=outcome.detail
            )
            if on_end is not None:
                on_end(outcome)

    return done


def approval_channels(secrets: Secrets) -> tuple[channel.Channel, ...]:
    """The approval channels' inbound halves (the factory): Slack, off without its secret."""
    return (slack.SlackChannel(secrets.slack_signing_secret or ""),)


def source_budget(settings: config.Settings) -> float:
    """Seconds the sources get per tick: every attempt's timeout plus the capped backoff."""
    prom = settings.prometheus
    return prom.timeout * prom.retries + 4.0 * (prom.retries - 1) + 1.0


async def _warm_start(target: pipeline.Target, settings: config.Settings, now: float) -> None:
    """Rebuild the alert memory from recent history so a restart keeps ``for`` timers."""
    if not isinstance(target.source, prometheus.PrometheusSource):
        return  # no history to read: the timers start afresh
    interval = settings.interval
    window = backtest.lookback(target.rules, interval)
    try:
        async with asyncio.timeout(source_budget(settings)):
            replayed = await backtest.replay(
                target.source,
                target.settings,
                target.rules,
                target.policy,
                start=now - window,
                end=now - interval,
                step=interval,
                state=target.state,
            )
    except Exception:  # best effort: an empty memory is the safe default
        log.exception("warm start failed; starting with empty alert memory", target=target.name)
        return
    target.memory = replayed.memory
    log.info("warm start", target=target.name, window_seconds=window, queries=replayed.queries)


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
