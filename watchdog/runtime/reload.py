"""SIGHUP: new settings and rules read in a thread and swapped in between two ticks; what only a
restart can change is said, not half-applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from watchdog import (
    config,
    errors,
    gate,
    model,
    rules,
    sdnotify,
)
from watchdog.runtime.guard import Guard
from watchdog.runtime.link import _pause

log = structlog.get_logger("watchdog.runtime")


@dataclass(slots=True)
class Live:
    """The settings in force: those of the start, or of the last reload that was taken."""

    settings: config.Settings


LIVE_SETTINGS = ("mode", "interval", "policy", "approval", "alertmanager.forget_after", "rules")


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
            if target.comparator is not None:  # its samples start after the new warm-up
                target.comparator.warmup = policy.warmup
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
