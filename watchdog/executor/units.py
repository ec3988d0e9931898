"""What the runbook asks of a service manager: the seam an executor plugs into.

The steps read a unit's state and start, stop, enable and disable units; nothing more. systemd
over D-Bus (``systemd.Systemd``) is the one that ships; ``systemd.Unreachable`` is the no-op
that answers every call with why the manager cannot be reached (a dry run reports it beside
every other preflight problem). ``connect`` is the factory. A Docker executor implements the
same protocol (containers for units, restart policies for enable/disable).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from watchdog import config
from watchdog.model import ResourceUse, UnitDefinition, UnitStatus


class Units(Protocol):
    """A service manager the runbook switches units with."""

    @property
    def manager(self) -> str:
        """Its name in what the journal says: ``systemd`` or ``Docker``."""
        ...

    @property
    def connected(self) -> bool:
        """False once the connection is gone (a step's outcome is then unknown, not failed)."""
        ...

    @property
    def disable_first(self) -> bool:
        """Whether to disable a unit before stopping it: Docker's restart policy acts at once
        (an ``always`` container comes back when the engine restarts); systemd's enablement
        acts only at boot, so there it is stop, then disable."""
        ...

    async def status(self, name: str) -> UnitStatus:
        """The unit's state, read back from the manager."""
        ...

    async def definition(self, name: str) -> UnitDefinition:
        """What defines it: what it lacks to start, its files, the manager's record."""
        ...

    async def start(self, name: str) -> str:
        """Start it and wait for the job; its result (``done`` is success)."""
        ...

    async def stop(self, name: str) -> str:
        """Stop it and wait for the job; its result."""
        ...

    async def enable(
        self, names: Sequence[str], *, as_before: Mapping[str, str] | None = None
    ) -> list[tuple[str, str, str]]:
        """Make them start at boot; the changes made. ``as_before``: a unit's restart policy
        as it was (Docker's, from the snapshot), restored exactly; systemd has none."""
        ...

    async def disable(self, names: Sequence[str]) -> list[tuple[str, str, str]]:
        """Keep them from starting at boot; the changes made."""
        ...

    async def reload(self) -> None:
        """Reload the manager's configuration after enabling or disabling."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@runtime_checkable
class Changes(Protocol):
    """A manager that says when a unit changed (Docker's event stream), so a crash is read
    when it happens rather than at the next reading."""

    def changes(self, names: Sequence[str]) -> AsyncGenerator[str, None]:
        """Each of ``names`` whose unit died or started, as it happens; ends with the stream."""
        ...


@runtime_checkable
class Usage(Protocol):
    """A manager that measures what a unit uses as a whole (Docker's container stats), so
    the verification judges the container, not one process tree read from ``/proc``."""

    @property
    def connected(self) -> bool:
        """False once the connection is gone: a failed reading is then unknown, not data."""
        ...

    async def usage(self, name: str, *, sample: float) -> ResourceUse:
        """Memory now and CPU over ``sample`` seconds (``ManagerError`` if unreadable)."""
        ...


async def connect(settings: config.SystemdSettings, *, call_timeout: float) -> Units:
    """The service manager the settings name (``SystemdError`` if it cannot be reached)."""
    from watchdog.executor.systemd import Systemd

    return await Systemd.connect(settings.bus, call_timeout=call_timeout)


async def connect_for(
    settings: config.Settings, target: config.TargetSettings, *, call_timeout: float
) -> Units:
    """The manager that switches ``target``: systemd, or Docker for ``executor: docker``
    (``ManagerError`` saying why if it cannot be reached)."""
    if target.executor == "docker":
        from watchdog.executor.docker import Containers

        return await Containers.connect(
            settings.docker.url,
            call_timeout=call_timeout,
            restart_policy=settings.docker.restart_policy,
        )
    return await connect(settings.systemd, call_timeout=call_timeout)
