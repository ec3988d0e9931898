"""Docker as the service manager: containers for units, restart policies for enable/disable.

The runbook's Method 3 (Docker) switches containers the way Method 2 switches units, so the
runbook stays one and this is one more ``units.Units``: ``status`` reads a container's
inspect record, ``start``/``stop`` start and stop it and wait until Docker says so, and
``enable``/``disable`` set its restart policy (``unless-stopped`` by default, ``no``) -- what
"start at boot" means to Docker. A unit name is a container's name, or
``compose:<project>/<service>``: the one container Compose labelled so
(``com.docker.compose.project``/``.service``), found without the Compose CLI; none or two is
an error that says so.

It speaks the Engine API over the daemon's socket with aiodocker, which rides on the aiohttp
the daemon already has. An engine that stops answering (restarted, its socket gone) marks the
connection lost, as a dropped D-Bus does: the runbook then leaves the run open for the
reconcile rather than failing it blind. ``changes`` follows the engine's event stream, so a
container's death is read when it happens. Access to that socket is root-equivalent: see the
README.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import datetime
from typing import Any

import aiodocker
import aiohttp

from watchdog import errors
from watchdog.model import ResourceUse, UnitDefinition, UnitStatus

COMPOSE = "compose:"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ENABLED_POLICIES = ("always", "unless-stopped", "on-failure")
# the engine's events a watch wants: a death (a crash, or a stop) and a start (a restart)
WATCHED_EVENTS = ("die", "start")
# the engine did not answer at all: the connection is lost, not the call refused
_UNANSWERED = (OSError, aiohttp.ClientError, TimeoutError)
NO_CONNECTION = 900  # aiodocker's status for "could not connect to the engine at all"
# answers that say the engine itself is not there: a proxy in front of it (502, 503, 504)
UNAVAILABLE = frozenset({NO_CONNECTION, 502, 503, 504})
NOT_FOUND = 404
DEFAULT_STOP_TIMEOUT = 10.0  # seconds: Docker's, for a container that sets none
STOP_SLACK = 15.0  # seconds beyond the stop timeout: the kill, and a busy engine


class DockerError(errors.ManagerError):
    """A Docker call failed, or a name does not name exactly one container. ``status`` is the
    engine's HTTP answer (404: no such thing), None when it gave none."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Containers:
    """One connection to a Docker Engine, switching containers for the runbook."""

    def __init__(
        self,
        client: aiodocker.Docker,
        *,
        call_timeout: float,
        restart_policy: str = "unless-stopped",
        url: str | None = None,
    ) -> None:
        self._docker = client
        self._url = url  # the event stream opens a session of its own there
        self._timeout = call_timeout
        self._policy = restart_policy
        self._closed = False
        self._lost = False

    manager = "Docker"
    disable_first = True  # a restart policy acts at once: "no" before the stop

    @classmethod
    async def connect(
        cls, url: str, *, call_timeout: float, restart_policy: str = "unless-stopped"
    ) -> Containers:
        """Connected once the daemon answers ``/version`` (``DockerError`` saying why not)."""
        client = aiodocker.Docker(url=url)
        try:
            async with asyncio.timeout(call_timeout):
                await client.version()
        except (aiodocker.DockerError, *_UNANSWERED) as exc:
            await client.close()
            raise DockerError(f"cannot reach Docker at {url}: {_why(exc)}") from None
        return cls(client, call_timeout=call_timeout, restart_policy=restart_policy, url=url)

    @property
    def connected(self) -> bool:
        """False once closed, or once the engine left a call unanswered: what it did is then
        unknown until a new connection reads it back."""
        return not (self._closed or self._lost)

    async def status(self, name: str) -> UnitStatus:
        found = await self._find(name, missing_ok=True)
        if found is None:
            return UnitStatus(name, "not-found", "inactive", "dead", "", 0, 0, None)
        return status_of(name, found)

    async def definition(self, name: str) -> UnitDefinition:
        """Its inspect record; its bind-mounted files (its config); and whether its image is
        still in the engine (a container whose image is gone cannot be started)."""
        found = await self._find(name, missing_ok=True)
        if found is None:
            return UnitDefinition(
                name,
                missing=(
                    f"{name}: no such container (create it once, e.g. "
                    "docker compose -f docker-compose-java.yml create)",
                ),
            )
        missing: list[str] = []
        image = str(found.get("Image", ""))
        try:
            await self._call(f"inspect the image of {name}", self._docker.images.inspect(image))
        except DockerError as exc:
            if exc.status != NOT_FOUND:  # unknown is not missing: say it could not be read
                raise
            shown = (found.get("Config") or {}).get("Image") or image
            missing.append(f"{name}: its image {shown} is not in the engine ({exc})")
        if (found.get("HostConfig") or {}).get("AutoRemove"):
            missing.append(
                f"{name} runs with --rm (AutoRemove): a stop would delete it, so it could never "
                "be started again; create it without --rm"
            )
        files = await asyncio.to_thread(_bound_files, found)
        return UnitDefinition(name, missing=tuple(missing), files=files, record=found)

    async def changes(self, names: Sequence[str]) -> AsyncGenerator[str, None]:
        """Each of ``names`` whose container died or started, from the engine's event stream
        (read without a deadline); ends when the stream does, ``DockerError`` when it breaks.

        The stream has a session of its own: its end says nothing about the calls a run is
        making, so it never marks this connection lost (the watch's readings do that)."""
        filters = json.dumps({"type": ["container"], "event": list(WATCHED_EVENTS)})
        forever = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=self._timeout)
        stream = aiodocker.Docker(url=self._url) if self._url is not None else self._docker
        try:
            async with stream._query(
                "events", params={"filters": filters}, timeout=forever
            ) as response:
                try:
                    async for line in response.content:
                        try:
                            event = json.loads(line)
                        except ValueError:
                            continue
                        for name in names:
                            if concerns(event, name):
                                yield name
                finally:  # aiodocker leaves the response to its caller, even when cancelled
                    response.close()
        except aiodocker.DockerError as exc:
            raise DockerError(f"the event stream: {_why(exc)}", status=exc.status) from None
        except _UNANSWERED as exc:  # the engine went away (restarted, its socket gone)
            raise DockerError(f"the event stream: {_why(exc)}") from None
        finally:
            if stream is not self._docker:
                await stream.close()

    async def usage(self, name: str, *, sample: float) -> ResourceUse:
        """Memory and CPU from the container's stats, as ``docker stats`` computes them:
        memory is the cgroup's usage less its inactive page cache; CPU is the cgroup's CPU
        time between two one-shot readings ``sample`` seconds apart, over the time between
        them as the engine stamped it."""
        record = await self._record(name)
        path = f"containers/{record['Id']}/stats"
        params = {"stream": "false", "one-shot": "true"}
        first = await self._call(
            f"read {name}'s stats", self._docker._query_json(path, params=params)
        )
        await asyncio.sleep(sample)
        second = await self._call(
            f"read {name}'s stats", self._docker._query_json(path, params=params)
        )
        return usage_of(name, first, second)

    async def start(self, name: str) -> str:
        record = await self._record(name)
        await self._call(f"start {name}", self._docker.containers.container(record["Id"]).start())
        return "done"

    async def stop(self, name: str) -> str:
        record = await self._record(name)
        # no t: the container's own stop timeout (StopTimeout, Compose's stop_grace_period),
        # which the call's own bound must outlast, or a slow stop would read as a lost engine
        grace = (record.get("Config") or {}).get("StopTimeout") or DEFAULT_STOP_TIMEOUT
        await self._call(
            f"stop {name}",
            self._docker.containers.container(record["Id"]).stop(),
            within=max(self._timeout, float(grace) + STOP_SLACK),
        )
        return "done"

    async def enable(
        self, names: Sequence[str], *, as_before: Mapping[str, str] | None = None
    ) -> list[tuple[str, str, str]]:
        """Each gets ``docker.restart_policy``, or exactly the policy it had before
        (``as_before``, e.g. ``on-failure:5``: a restore puts the primary back as it was)."""
        before = as_before or {}
        return [await self._policy_of(name, before.get(name) or self._policy) for name in names]

    async def disable(self, names: Sequence[str]) -> list[tuple[str, str, str]]:
        return [await self._policy_of(name, "no") for name in names]

    async def reload(self) -> None:
        """Docker has nothing to reload: a restart policy takes effect at once."""

    def close(self) -> None:
        """Closes the session on the running loop (``units.Units`` closes synchronously)."""
        if self._closed:
            return
        self._closed = True
        self._closing = asyncio.get_running_loop().create_task(self._docker.close())

    async def aclose(self) -> None:
        self._closed = True
        await self._docker.close()

    async def _policy_of(self, name: str, policy: str) -> tuple[str, str, str]:
        record = await self._record(name)
        kind, _, retries = policy.partition(":")  # Docker's own spelling: on-failure:5
        wanted: dict[str, Any] = {"Name": kind}
        if retries.isdigit():
            wanted["MaximumRetryCount"] = int(retries)
        body = json.dumps({"RestartPolicy": wanted})
        await self._call(
            f"set the restart policy of {name}",
            self._docker._query_json(f"containers/{record['Id']}/update", method="POST", data=body),
        )
        return ("restart-policy", name, policy)

    async def _record(self, name: str) -> dict[str, Any]:
        found = await self._find(name)
        if found is None:  # _find raises for a missing container unless told not to
            raise DockerError(f"{name}: no such container")
        return found

    async def _find(self, name: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        """The container's inspect record (``None`` if there is none and that is fine)."""
        if name.startswith(COMPOSE):
            project, _, service = name.removeprefix(COMPOSE).partition("/")
            if not project or not service:
                raise DockerError(f"{name!r}: write compose:<project>/<service>")
            labels = [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"]
            listed = await self._call(
                f"list {name}",
                self._docker.containers.list(all=True, filters=json.dumps({"label": labels})),
            )
            if len(listed) > 1:
                raise DockerError(
                    f"{name}: {len(listed)} containers carry these Compose labels; the runbook "
                    "switches exactly one (scale the service to 1, or name the container)"
                )
            if not listed:
                if missing_ok:
                    return None
                raise DockerError(f"{name}: no container carries these Compose labels")
            name = listed[0].id
        try:
            container = await self._call(f"find {name}", self._docker.containers.get(name))
        except DockerError as exc:
            if missing_ok and exc.status == NOT_FOUND:  # it said so: there is no such container
                return None
            raise
        shown: dict[str, Any] = container._container
        return shown

    async def _call(self, what: str, call: Any, *, within: float | None = None) -> Any:
        """Await one engine call, bounded. An answer that is an error raises ``DockerError``
        with its status; no answer at all (or a closed session) marks the connection lost."""
        if self._closed:  # dropped under a run: its next call is a lost connection, not a bug
            call.close()
            self._lost = True
            raise DockerError(f"{what}: the connection to Docker was closed")
        try:
            async with asyncio.timeout(within or self._timeout):
                return await call
        except aiodocker.DockerError as exc:
            if exc.status in UNAVAILABLE:
                self._lost = True
            raise DockerError(f"{what}: {_why(exc)}", status=exc.status) from None
        except _UNANSWERED as exc:
            self._lost = True
            raise DockerError(f"{what}: {_why(exc)}") from None


def status_of(name: str, record: dict[str, Any]) -> UnitStatus:
    """A container's inspect record as the runbook reads a unit."""
    state = record.get("State") or {}
    running = bool(state.get("Running"))
    failed = not running and state.get("Status") == "exited" and state.get("ExitCode", 0) != 0
    restart = (record.get("HostConfig") or {}).get("RestartPolicy") or {}
    policy = restart.get("Name") or "no"
    retries = int(restart.get("MaximumRetryCount") or 0)
    if state.get("Restarting"):  # dead, waiting for its restart: systemd's auto-restart
        active = "activating"
    else:  # a paused container still holds its port and memory: it counts as running
        active = "active" if running else ("failed" if failed else "inactive")
    return UnitStatus(
        name=name,
        load_state="loaded",
        active_state=active,
        sub_state=str(state.get("Status", "")),
        unit_file_state="enabled" if policy in ENABLED_POLICIES else "disabled",
        main_pid=int(state.get("Pid") or 0),
        n_restarts=int(record.get("RestartCount") or 0),
        active_enter_timestamp=_instant(state.get("StartedAt")) if running else None,
        fragment_path=f"docker:{record.get('Id', '')}",
        restart_policy=f"{policy}:{retries}" if retries else policy,
    )


def usage_of(name: str, first: dict[str, Any], second: dict[str, Any]) -> ResourceUse:
    """Two stats readings of a container as its resource use (``DockerError`` if the engine
    measures none: a stopped container, or no cgroup controller)."""
    memory = second.get("memory_stats") or {}
    usage = int(memory.get("usage") or 0)
    if usage <= 0:
        raise DockerError(f"{name}: Docker reports no memory use (is it running?)")
    stats = memory.get("stats") or {}
    # cgroup v1 names the inactive page cache total_inactive_file, v2 inactive_file
    inactive = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    resident = usage - inactive if 0 <= inactive < usage else usage
    used = [
        int(((s.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0)
        for s in (first, second)
    ]
    began, ended = _instant(first.get("read")), _instant(second.get("read"))
    if began is None or ended is None or ended <= began:
        raise DockerError(f"{name}: Docker's stats carry no usable reading times")
    seconds = ended - began
    return ResourceUse(resident, max(used[1] - used[0], 0) / 1e9 / seconds, seconds)


def _bound_files(record: dict[str, Any]) -> tuple[str, ...]:
    """The container's bind-mounted files (a config file; never a directory of data)."""
    return tuple(
        str(mount["Source"])
        for mount in record.get("Mounts") or ()
        if mount.get("Type") == "bind" and os.path.isfile(str(mount.get("Source", "")))
    )


def concerns(event: dict[str, Any], name: str) -> bool:
    """Whether an engine event is about the container ``name`` names (by its name, or by the
    Compose labels a ``compose:<project>/<service>`` name stands for)."""
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    if name.startswith(COMPOSE):
        project, _, service = name.removeprefix(COMPOSE).partition("/")
        return bool(
            attributes.get(PROJECT_LABEL) == project and attributes.get(SERVICE_LABEL) == service
        )
    return bool(attributes.get("name") == name)


def _instant(text: object) -> float | None:
    """Docker's RFC 3339 with nanoseconds as Unix seconds."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    head, _, fraction = text.rstrip("Z").partition(".")
    try:
        whole = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return None
    return whole + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiodocker.DockerError):
        if exc.status == NO_CONNECTION:
            return str(exc.message)
        return f"Docker said {exc.status}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"
