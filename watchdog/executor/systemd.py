"""systemd over D-Bus: the few Manager calls the runbook needs, with every wait bounded.

A thin adapter on dbus-fast (asyncio). Calls are plain ``Message``s to
``org.freedesktop.systemd1`` -- no introspection round-trips -- and job completion is read from
the ``JobRemoved`` signal through a raw message handler that is installed, with ``Subscribe``,
*before* the job is requested: the signal can arrive before the method reply. Only the result
``done`` is success, and even then ``ActiveState`` is read back.

The bus is the system bus by default, the user bus, or an explicit address such as
``unix:path=/run/systemd/private`` (systemd's peer-to-peer socket, which has no bus daemon:
there ``AddMatch`` is refused, deliberately ignored, and the signals arrive anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dbus_fast._private.address import get_bus_address, parse_address
from dbus_fast.aio.message_bus import MessageBus
from dbus_fast.constants import BusType, MessageType
from dbus_fast.errors import DBusError
from dbus_fast.message import Message

from watchdog import errors
from watchdog.model import UnitDefinition, UnitStatus

SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
_REMEMBERED_RESULTS = 256
# A connection systemd does not pick up is dropped and made again: a fresh one is usually
# answered at once (seen on a namespaced systemd right after a unit started), so many short
# attempts beat a few long ones. Together they still allow a busy systemd 30 s.
CONNECT_TIMEOUT = 3.0
CONNECT_ATTEMPTS = 10
_JOB_MATCH = f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'"


# systemd's own peer-to-peer socket (sd-bus, seen with systemd 252) leaves a connection's Hello
# unanswered when it arrives in the same read as the authentication's BEGIN; dbus-fast sends
# the two back to back, so under load most connections hung (12 of 16 measured). A short pause
# between them makes every one answer (16 of 16). The bus daemon is not affected.
HELLO_PAUSE = 0.02  # seconds


class _Bus(MessageBus):
    """dbus-fast's bus, pausing between authentication and Hello (see ``HELLO_PAUSE``)."""

    async def _authenticate(self) -> None:
        await super()._authenticate()
        await asyncio.sleep(HELLO_PAUSE)


# The pause hooks a private method of dbus-fast (tested with 5.x, pinned below 6): if a release
# renames it, fail at import rather than silently lose the pause.
if not inspect.iscoroutinefunction(getattr(MessageBus, "_authenticate", None)):
    raise ImportError("dbus-fast changed: MessageBus._authenticate is gone (see HELLO_PAUSE)")


def _missing_socket(bus: str) -> str | None:
    """The unix socket path of ``bus`` if it does not exist, else None."""
    try:
        if bus in ("system", "user"):
            kind = BusType.SYSTEM if bus == "system" else BusType.SESSION
            address = get_bus_address(kind)
        else:
            address = bus
        for transport, options in parse_address(address):
            if transport == "unix" and "path" in options:
                return None if os.path.exists(options["path"]) else str(options["path"])
    except Exception:
        return None
    return None


SystemdError = errors.SystemdError
_NoAnswer = errors.NoAnswer


class Systemd:
    """One D-Bus connection to systemd's Manager."""

    def __init__(self, bus: MessageBus, *, timeout: float = 90.0) -> None:
        self._bus = bus
        self._timeout = timeout
        self._jobs: dict[str, asyncio.Future[str]] = {}
        self._finished: dict[str, str] = {}  # results that beat the method reply
        self._subscribed = False
        bus.add_message_handler(self._on_message)
        # a job wait must not outlive the connection: fail it the moment the bus drops
        self._disconnected = asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        self._disconnected.add_done_callback(self._fail_waiting_jobs)

    @classmethod
    async def connect(cls, bus: str = "system", *, call_timeout: float = 90.0) -> Systemd:
        """``bus`` is ``system``, ``user`` or a D-Bus address (``unix:path=...``).

        A connection that gets no answer is tried again, at most ``CONNECT_ATTEMPTS`` times:
        a busy systemd is not a missing one.
        """
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                return await cls._connect_once(bus, call_timeout)
            except _NoAnswer as exc:
                if attempt == CONNECT_ATTEMPTS:
                    raise SystemdError(str(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    async def _connect_once(cls, bus: str, call_timeout: float) -> Systemd:
        where = "the system bus" if bus == "system" else ("the user bus" if bus == "user" else bus)
        missing = _missing_socket(bus)
        if missing is not None:  # dbus-fast would leak its socket failing on this
            raise SystemdError(f"cannot connect to systemd on {where}: no socket at {missing}")
        connection: MessageBus | None = None

        try:
            # made on the loop: dbus-fast creates and connects the socket in connect()
            if bus == "system":
                connection = _Bus(bus_type=BusType.SYSTEM)
            elif bus == "user":
                connection = _Bus(bus_type=BusType.SESSION)
            else:
                connection = _Bus(bus_address=bus)
            async with asyncio.timeout(min(call_timeout, CONNECT_TIMEOUT)):
                await connection.connect()
        except TimeoutError:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.disconnect()
            raise _NoAnswer(
                f"cannot connect to systemd on {where}: no answer within {CONNECT_TIMEOUT:g}s"
                f" ({CONNECT_ATTEMPTS} attempts)"
            ) from None
        except (OSError, DBusError, ValueError, KeyError) as exc:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.disconnect()
            raise SystemdError(f"cannot connect to systemd on {where}: {exc}") from None
        return cls(connection, timeout=call_timeout)

    manager = "systemd"
    disable_first = False  # enablement acts at boot: stop first, as the procedure does

    def close(self) -> None:
        self._bus.disconnect()

    @property
    def connected(self) -> bool:
        """False once the bus connection is gone (systemd restarted, socket closed)."""
        return bool(self._bus.connected)

    # -- calls -----------------------------------------------------------------------------

    async def _call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        path: str = SYSTEMD_PATH,
        interface: str = MANAGER,
        destination: str = SYSTEMD,
    ) -> list[Any]:
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._bus.call(message)
        except TimeoutError:
            raise SystemdError(
                f"systemd did not answer {member} within {self._timeout:g}s"
            ) from None
        except Exception as exc:  # a dropped bus surfaces as EOFError and the like
            raise SystemdError(f"{member}: the D-Bus connection failed: {exc!r}") from None
        if reply is None:
            raise SystemdError(f"systemd sent no reply to {member}")
        if reply.message_type == MessageType.ERROR:
            detail = reply.body[0] if reply.body else ""
            raise SystemdError(f"{member}: {reply.error_name}: {detail}")
        return list(reply.body)

    async def load_unit(self, name: str) -> str:
        """The unit's object path, loading it from disk if needed."""
        (path,) = await self._call("LoadUnit", "s", [name])
        return str(path)

    async def status(self, name: str) -> UnitStatus:
        """The unit's state as systemd sees it now."""
        path = await self.load_unit(name)
        unit = await self._properties(path, UNIT)
        service = await self._properties(path, SERVICE) if name.endswith(".service") else {}
        entered = int(unit.get("ActiveEnterTimestamp", 0))
        return UnitStatus(
            name=name,
            load_state=str(unit.get("LoadState", "")),
            active_state=str(unit.get("ActiveState", "")),
            sub_state=str(unit.get("SubState", "")),
            unit_file_state=str(unit.get("UnitFileState", "")),
            main_pid=int(service.get("MainPID", 0)),
            n_restarts=int(service.get("NRestarts", 0)),
            active_enter_timestamp=entered / 1e6 if entered else None,
            fragment_path=str(unit.get("FragmentPath", "")),
        )

    async def definition(self, name: str) -> UnitDefinition:
        """The unit file systemd loaded (its load state is the status's to say)."""
        loaded = (await self.status(name)).fragment_path
        return UnitDefinition(name, files=(loaded,) if loaded else ())

    async def _properties(self, path: str, interface: str) -> dict[str, Any]:
        (values,) = await self._call("GetAll", "s", [interface], path=path, interface=PROPERTIES)
        return {key: variant.value for key, variant in values.items()}

    async def start(self, name: str) -> str:
        """StartUnit (mode replace) and wait for its job; the job's result."""
        return await self._job("StartUnit", name)

    async def stop(self, name: str) -> str:
        """StopUnit (mode replace) and wait for its job; the job's result."""
        return await self._job("StopUnit", name)

    async def enable(
        self, names: Sequence[str], *, as_before: Mapping[str, str] | None = None
    ) -> list[tuple[str, str, str]]:
        """EnableUnitFiles (persistent, force); the symlinks it changed (a unit has no restart
        policy to restore: ``as_before`` is for containers)."""
        _, changes = await self._call("EnableUnitFiles", "asbb", [list(names), False, True])
        return [(str(c[0]), str(c[1]), str(c[2])) for c in changes]

    async def disable(self, names: Sequence[str]) -> list[tuple[str, str, str]]:
        """DisableUnitFiles (persistent); the symlinks it changed."""
        (changes,) = await self._call("DisableUnitFiles", "asb", [list(names), False])
        return [(str(c[0]), str(c[1]), str(c[2])) for c in changes]

    async def reload(self) -> None:
        """daemon-reload."""
        await self._call("Reload")

    # -- jobs ------------------------------------------------------------------------------

    async def _job(self, method: str, name: str) -> str:
        await self._subscribe()  # the handler is in place before the job exists
        (job,) = await self._call(method, "ss", [name, "replace"])
        job = str(job)
        if job in self._finished:  # the signal beat the method reply
            return self._finished.pop(job)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._jobs[job] = future
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError:
            raise SystemdError(
                f"{method} {name}: the job did not finish within {self._timeout:g}s"
            ) from None
        finally:
            self._jobs.pop(job, None)

    def _fail_waiting_jobs(self, disconnected: asyncio.Future[None]) -> None:
        why = "closed" if disconnected.cancelled() else repr(disconnected.exception())
        for job, future in self._jobs.items():
            if not future.done():
                future.set_exception(
                    SystemdError(f"job {job}: the D-Bus connection was lost ({why})")
                )

    async def _subscribe(self) -> None:
        if self._subscribed:
            return
        await self._call("Subscribe")
        # On a bus with a daemon, signals need a match rule; systemd's private socket has no
        # daemon and refuses AddMatch -- its signals reach subscribers anyway.
        try:
            await self._call(
                "AddMatch",
                "s",
                [_JOB_MATCH],
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
            )
        except SystemdError as exc:
            if "UnknownObject" not in str(exc) and "Unknown object" not in str(exc):
                raise  # a real bus refused it: without the match no JobRemoved would arrive
        self._subscribed = True

    def _on_message(self, message: Message) -> bool:
        if (
            message.message_type == MessageType.SIGNAL
            and message.interface == MANAGER
            and message.member == "JobRemoved"
        ):
            _, job, _, result = message.body
            future = self._jobs.get(str(job))
            if future is not None and not future.done():
                future.set_result(str(result))
            else:
                self._finished[str(job)] = str(result)
                while len(self._finished) > _REMEMBERED_RESULTS:  # other clients' jobs
                    del self._finished[next(iter(self._finished))]
        return False  # let other handlers see it too


class Unreachable:
    """Stands in for a manager (``Systemd``, or Docker's ``Containers``) that cannot be
    reached: every call says why.

    A dry run uses it to report the missing bus next to every other preflight problem.
    """

    def __init__(self, reason: str, *, manager: str = "systemd") -> None:
        self.reason = reason
        self.manager = manager  # the manager that could not be reached: systemd or Docker
        self.disable_first = manager == "Docker"

    def _fail(self) -> SystemdError:
        return SystemdError(self.reason)

    @property
    def connected(self) -> bool:
        return False

    async def status(self, name: str) -> UnitStatus:
        raise self._fail()

    async def definition(self, name: str) -> UnitDefinition:
        raise self._fail()

    async def start(self, name: str) -> str:
        raise self._fail()

    async def stop(self, name: str) -> str:
        raise self._fail()

    async def enable(
        self, names: Sequence[str], *, as_before: Mapping[str, str] | None = None
    ) -> list[tuple[str, str, str]]:
        raise self._fail()

    async def disable(self, names: Sequence[str]) -> list[tuple[str, str, str]]:
        raise self._fail()

    async def reload(self) -> None:
        raise self._fail()

    def close(self) -> None:
        pass
