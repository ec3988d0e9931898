"""The shipped unit, systemd/rollback-watchdog.service with the mode (a) drop-in root-mode.conf,
run by a real systemd (PID 1 of a throwaway namespace) next to two Lavalink simulator units and a
real Prometheus: Type=notify readiness, STATUS=, WatchdogSec= pings, reload (good and broken
config), a clean stop, and a real rollback out of a crash loop with every hardening line on.

The test unit is the shipped file's text with only what the sandbox forces changed; each change
is listed in SANDBOX_EDITS with its reason, and the first test asserts that nothing else differs.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import sqlite3
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from watchdog import model
from watchdog_lab import lavalink, prometheus, sandbox, stage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        sandbox.unavailable_reason() is not None,
        reason=f"no sandbox systemd here: {sandbox.unavailable_reason()}",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "systemd" / "rollback-watchdog.service"
ROOT_MODE = ROOT / "systemd" / "rollback-watchdog.service.d" / "root-mode.conf"
UNIT = "rollback-watchdog.service"
PYTHON = sys.executable  # the venv's python; /work and /usr stay visible inside
SYSTEM_PYTHON = Path("/usr/bin/python3")
SERVICE_PYTHON = sandbox.INSIDE_DIR / "venv" / "bin" / "python3"  # see service_venv
PASSWORD = stage.PASSWORD
PRIMARY, FALLBACK = stage.PRIMARY, stage.FALLBACK
INSIDE = sandbox.INSIDE_DIR  # the sandbox's host_dir, as the units inside see it
CONFIG = INSIDE / "config.yml"
STATE = INSIDE / "state"
LOG = INSIDE / "watchdog.log"  # the unit's stdout and stderr (there is no journald inside)
INTERVAL = 2  # seconds: scrapes, evaluations, probes
TEST_WATCHDOG_SEC = 4
# Paths the shipped unit would create on the host: StateDirectory= and ConfigurationDirectory=.
HOST_STATE, HOST_CONFIG = Path("/var/lib/rollback-watchdog"), Path("/etc/rollback-watchdog")
# mode (a)'s bounding set, as /proc/<pid>/status shows it: CAP_DAC_OVERRIDE (1), CAP_SYS_PTRACE (19)
ROOT_MODE_CAPS = (1 << 1) | (1 << 19)


def unit(description: str, exec_start: str) -> str:
    return sandbox.service_unit(description, exec_start)


def simulator(flavour: str, *extra: str) -> str:
    return lavalink.command_line(flavour, *(" ".join(extra).split()), password=PASSWORD)


@dataclass(frozen=True)
class Edit:
    """One line of the shipped unit replaced for the sandbox, and why the sandbox forces it."""

    old: str
    new: tuple[str, ...]
    why: str


SANDBOX_EDITS = (
    Edit(
        "[Unit]",
        ("[Unit]", "DefaultDependencies=no"),
        # asserted in the first test: booted_systemd refuses the shipped text
        "the sandbox boots only units without default dependencies: they would pull in "
        "sysinit.target, whose tmpfiles services clean the host's directories",
    ),
    Edit(
        "ExecStart=/opt/rollback-watchdog/bin/rollback-watchdog run "
        "--config /etc/rollback-watchdog/config.yml",
        (f"ExecStart={SERVICE_PYTHON} -m watchdog run --config {CONFIG}",),
        "this checkout's package from its venv, not an install in /opt; the config in the "
        "sandbox's directory, not in the host's /etc. The interpreter is the system's "
        "/usr/bin/python3 with the venv's site-packages (service_venv): the venv's own "
        "interpreter may live under a home directory (here pyenv's, under /root), which "
        "ProtectHome=yes hides (asserted in a test)",
    ),
    Edit(
        "StateDirectory=rollback-watchdog",
        (f"ReadWritePaths={STATE}",),
        "/var/lib is the host's inside the sandbox (only /var/lib/systemd is private), so "
        "StateDirectory= would create /var/lib/rollback-watchdog on the host; the state lives in "
        "the sandbox's directory instead, writable under ProtectSystem=strict as StateDirectory= "
        "would have made it",
    ),
    Edit(
        "ConfigurationDirectory=rollback-watchdog",
        (),
        "/etc is the host's inside the sandbox (only /etc/systemd/system is private), so "
        "ConfigurationDirectory= would create /etc/rollback-watchdog on the host",
    ),
)


def sandboxed(shipped: str) -> str:
    """The shipped unit with SANDBOX_EDITS applied, each one commented in the result."""
    lines = shipped.splitlines()
    for edit in SANDBOX_EDITS:
        assert lines.count(edit.old) == 1, f"the shipped unit changed: {edit.old!r}"
        at = lines.index(edit.old)
        note = [f"# sandbox: {line}" for line in textwrap.wrap(edit.why, 92)]
        if edit.old not in edit.new:
            note.append(f"# sandbox: was {edit.old}")
        lines[at : at + 1] = [*note, *edit.new]
    return "\n".join(lines) + "\n"


def directives(text: str) -> list[str]:
    """The unit's section headers and assignments, in order (no comments, no blank lines)."""
    return [
        line.strip()
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and line.strip()[0] not in "#;"
    ]


def drop_ins() -> dict[str, str]:
    """The drop-ins installed next to the test unit: root-mode.conf as shipped, the sandbox's
    relocation of its one path, and what the test itself needs."""
    root_mode = ROOT_MODE.read_text()
    assert "ReadWritePaths=-/opt/lavalink-java" in root_mode.splitlines()
    return {
        "root-mode.conf": root_mode,
        # root-mode.conf's ReadWritePaths=-/opt/lavalink-java, where the layout puts it here
        # (targets[].fallback.config_dir below): carry-config writes application.yml there.
        # A checkout (and its venv) under /tmp, as a CI clone may be, is bound back into the
        # sandbox (sandbox.kept_paths); PrivateTmp=yes would hide it from the unit again.
        "sandbox-paths.conf": f"[Service]\nReadWritePaths=-{INSIDE}/opt/lavalink-java\n"
        + "".join(f"BindReadOnlyPaths={path}\n" for path in sandbox.kept_paths()),
        # No journald runs inside; the unit's output goes to a file the test reads.
        "test-log.conf": f"[Service]\nStandardOutput=append:{LOG}\nStandardError=append:{LOG}\n",
        # How the main process ended, as systemd tells ExecStopPost= (an inactive unit is
        # unloaded at once, so `systemctl show` would answer defaults). $$: a literal $ for sh.
        "test-record-exit.conf": "[Service]\nExecStopPost=/bin/sh -c 'echo "
        f'"$$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS" >> {STATE}/exits\'\n',
        # Short enough that ten seconds cover two watchdog periods.
        "test-watchdog.conf": f"[Service]\nWatchdogSec={TEST_WATCHDOG_SEC}s\n",
    }


HOMES = (Path("/root"), Path("/home"), Path("/run/user"))  # what ProtectHome=yes hides


def service_venv(host: Path) -> None:
    """``host/venv``: a venv of the system's interpreter over this venv's site-packages.

    The installed unit runs /opt/rollback-watchdog/bin/rollback-watchdog from a venv made with
    the system's python3. This checkout's venv may be made from an interpreter under /root
    (pyenv), which ProtectHome=yes hides from the unit; this gives the unit the same packages
    (this checkout, installed editable) on the system's interpreter of the same version.
    """
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(*sys.version_info[:2], sep='.')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == "{}.{}".format(*sys.version_info[:2]), version  # one ABI for both
    venv = host / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib" / f"python{version}").mkdir(parents=True)
    (venv / "bin" / "python3").symlink_to(SYSTEM_PYTHON)
    site = Path(sysconfig.get_path("purelib"))
    (venv / "lib" / f"python{version}" / "site-packages").symlink_to(site)
    (venv / "pyvenv.cfg").write_text(
        f"home = {SYSTEM_PYTHON.parent}\ninclude-system-site-packages = false\n"
    )


def probe_unit(python: Path | str) -> str:
    """A one-shot unit with the shipped unit's ProtectHome=yes that only imports the package."""
    return textwrap.dedent(f"""\
        [Unit]
        Description=can {python} run under ProtectHome=yes
        DefaultDependencies=no

        [Service]
        Type=oneshot
        ProtectHome=yes
        ExecStart={python} -c "import watchdog.runtime"
        """)


def primary_unit() -> str:
    """The Rust node as the stage runs it: restarted always, faults from an environment file
    read at each start (so a crash loop keeps crashing), never both nodes at once."""
    return textwrap.dedent(f"""\
        [Unit]
        Description=Lavalink Rust (primary, simulated)
        DefaultDependencies=no
        StartLimitIntervalSec=0
        Conflicts={FALLBACK}

        [Service]
        Type=simple
        EnvironmentFile=-{INSIDE}/rust.env
        ExecStart={simulator("rust")} $FAULT_FLAGS
        Restart=always
        RestartSec=1

        [Install]
        WantedBy=wd-test.target
        """)


def watchdog_config(prometheus_url: str, port: int, bus: str, *, mode: str = "auto") -> str:
    return textwrap.dedent(f"""\
        mode: {mode}
        interval: {INTERVAL}s
        state_dir: {STATE}
        systemd: {{bus: '{bus}'}}
        prometheus: {{url: '{prometheus_url}', timeout: 2s, retries: 1}}
        listen: {{host: 127.0.0.1, port: {port}}}
        policy: {{warmup: 5s, cooldown: 0s, inconclusive_after: 1m}}
        targets:
          - name: lavalink
            primary:
              unit: {PRIMARY}
              job: lavalink-rust
              config_dir: {INSIDE}/opt/lavalink-rust/config
            fallback:
              unit: {FALLBACK}
              job: lavalink-java
              config_dir: {INSIDE}/opt/lavalink-java
              binary: {INSIDE}/opt/lavalink-java/Lavalink.jar
            rules: [{INSIDE}/rules/lavalink.yml]
            runbook:
              url: {stage.SERVICE_URL}
              password_file: {INSIDE}/password
              verify: {{timeout: 30s, settle: 5s, cpu_sample: 300ms, max_cpu: 0.9}}
            probes: {{interval: {INTERVAL}s, loadtracks_interval: {INTERVAL}s, timeout: 2s}}
            watch: {{interval: 1s}}
        """)


@dataclass
class World:
    box: sandbox.Sandbox
    host: Path
    prometheus_url: str
    port: int

    def show(self, prop: str, unit_name: str = UNIT) -> str:
        result = self.box.systemctl("show", "-P", prop, unit_name, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def log(self, since: int = 0) -> str:
        path = self.host / "watchdog.log"
        return path.read_text()[since:] if path.exists() else ""

    def log_size(self) -> int:
        path = self.host / "watchdog.log"
        return len(path.read_text()) if path.exists() else 0

    def diagnostics(self) -> str:
        status = self.box.systemctl("status", "--no-pager", UNIT).stdout
        console = (self.host / "console.log").read_text()[-3000:]
        return (
            f"\n--- systemctl status:\n{status}\n--- console:\n{console}\n--- log:\n"
            + (self.log()[-4000:])
        )

    def write_config(self, text: str) -> None:
        path = self.host / "config.yml"
        temporary = path.with_suffix(".new")
        temporary.write_text(text)
        temporary.replace(path)  # never a half-written file for a reload to read

    def good_config(self, *, mode: str = "auto") -> str:
        return watchdog_config(self.prometheus_url, self.port, self.box.bus_address, mode=mode)

    def running(self) -> None:
        """The watchdog unit active (started if it is not)."""
        if self.show("ActiveState") != "active":
            self.write_config(self.good_config())
            self.box.systemctl("reset-failed", UNIT)
            started = self.box.systemctl("start", UNIT, timeout=90)
            assert started.returncode == 0, started.stderr + self.diagnostics()
        assert self.show("ActiveState") == "active", self.diagnostics()

    def until(self, what: str, check: Callable[[], bool], *, within: float) -> None:
        deadline = time.monotonic() + within
        while not check():
            assert time.monotonic() < deadline, f"not within {within:g} s: {what}" + (
                self.diagnostics()
            )
            time.sleep(0.2)

    def journal(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.host / "state" / "journal.sqlite3", timeout=10)
        db.row_factory = sqlite3.Row
        return db


def prometheus_config(watchdog_port: int) -> str:
    return textwrap.dedent(f"""\
        global:
          scrape_interval: {INTERVAL}s
          evaluation_interval: {INTERVAL}s
        scrape_configs:
          - job_name: lavalink-rust
            static_configs: [{{targets: ['127.0.0.1:{stage.PORT}']}}]
          - job_name: rollback-watchdog
            static_configs: [{{targets: ['127.0.0.1:{watchdog_port}']}}]
        """)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    host_paths_before = {path: path.exists() for path in (HOST_STATE, HOST_CONFIG)}
    host = tmp_path_factory.mktemp("own-unit")
    stage.lay_out(host)
    (host / "rust.env").write_text("FAULT_FLAGS=\n")
    (host / "rules").mkdir()
    (host / "rules" / "lavalink.yml").write_text(stage.fast_rules(stage.RULES, 30.0))
    (host / "state").mkdir(mode=0o700)  # ReadWritePaths= needs it to exist
    service_venv(host)
    port = prometheus.free_port()
    units = {
        PRIMARY: primary_unit(),
        FALLBACK: unit("Lavalink Java (fallback)", simulator("java", "--startup-delay 1")),
        UNIT: sandboxed(SHIPPED.read_text()),  # booted_systemd checks it like the others
        "probe-venv-python.service": probe_unit(PYTHON),
        "probe-service-python.service": probe_unit(SERVICE_PYTHON),
    }
    with (
        prometheus.running_prometheus(
            host / "prometheus", config_yaml=prometheus_config(port)
        ) as server,
        sandbox.booted_systemd(host, units) as box,
    ):
        folder = box.file_inside(f"/etc/systemd/system/{UNIT}.d")
        folder.mkdir()
        for name, text in drop_ins().items():
            (folder / name).write_text(text)
        assert box.systemctl("daemon-reload").returncode == 0
        world = World(box, host, server.url, port)
        world.write_config(world.good_config())
        box.systemctl("enable", "--now", PRIMARY)
        stage.wait_for_node(timeout=30)
        yield world
    # nothing of the unit's reached the host's /etc or /var/lib
    assert {path: path.exists() for path in host_paths_before} == host_paths_before


def test_the_test_unit_differs_from_the_shipped_one_only_where_the_sandbox_forces_it(
    tmp_path: Path,
) -> None:
    shipped = SHIPPED.read_text()
    derived = sandboxed(shipped)
    diff = list(difflib.ndiff(directives(shipped), directives(derived)))
    removed = {line[2:] for line in diff if line.startswith("- ")}
    added = {line[2:] for line in diff if line.startswith("+ ")}
    assert removed == {e.old for e in SANDBOX_EDITS} - {"[Unit]"}
    assert added == {n for e in SANDBOX_EDITS for n in e.new} - {"[Unit]"}
    # every hardening line is still there, in the same section
    hardening = directives(shipped.partition("# --- hardening ---")[2].partition("[Install]")[0])
    assert len(hardening) >= 25 and set(hardening) <= set(directives(derived))
    # the reasons, as facts of this machine and this sandbox:
    refused = sandbox.booted_systemd(tmp_path, {UNIT: shipped})
    with pytest.raises(ValueError, match="DefaultDependencies=no"), refused:  # before booting
        pass
    private = [Path(d) for d in sandbox.PRIVATE_DIRS]
    for path in (HOST_STATE, HOST_CONFIG):
        assert not any(path.is_relative_to(d) for d in private), path
    assert Path("/var/lib/systemd") in private and Path("/etc/systemd/system") in private


def test_protect_home_hides_the_venvs_own_interpreter_not_the_service_venv(world: World) -> None:
    """Why ExecStart runs the system's interpreter: with the shipped ProtectHome=yes, a python
    under a home directory cannot even be executed (203/EXEC)."""
    hidden = any(Path(PYTHON).resolve().is_relative_to(home) for home in HOMES)
    venv = world.box.systemctl("start", "probe-venv-python.service")
    assert (venv.returncode != 0) == hidden, venv.stderr
    if hidden:
        assert world.show("ExecMainStatus", "probe-venv-python.service") == "203"  # EXEC
    service = world.box.systemctl("start", "probe-service-python.service")
    assert service.returncode == 0, service.stderr
    assert world.show("Result", "probe-service-python.service") == "success"


def mounts_at(mountinfo: list[str], point: str) -> str:
    """The root field (what is mounted) of the topmost mount at `point`."""
    return [line.split()[3] for line in mountinfo if line.split()[4] == point][-1]


def test_start_returns_once_ready_and_status_names_the_verdict(world: World) -> None:
    if world.show("ActiveState") == "active":
        world.box.systemctl("stop", UNIT, timeout=60)
    world.box.systemctl("reset-failed", UNIT)
    world.write_config(world.good_config())
    size = world.log_size()
    begun = time.monotonic()
    started = world.box.systemctl("start", UNIT, timeout=90)
    took = time.monotonic() - begun
    assert started.returncode == 0, started.stderr + world.diagnostics()
    # right after `start` returned: Type=notify made it wait for READY=1
    assert world.show("ActiveState") == "active", world.diagnostics()
    assert world.show("SubState") == "running"
    status = world.show("StatusText")
    verdicts = "|".join(v.value for v in model.Verdict)
    assert re.match(rf"mode auto; lavalink: ({verdicts})\b", status), status
    log = world.log(size)
    assert '"event": "started"' in log, log[-3000:]
    assert took > 0.5  # the start waited for the daemon (imports, journal, a first tick)
    # the hardening took effect in the running process
    main = int(world.show("MainPID"))
    proc = world.box.file_inside(f"/proc/{main}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in proc.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # a filter is installed
    assert int(fields["CapBnd"], 16) == ROOT_MODE_CAPS, fields["CapBnd"]
    assert fields["Uid"].split()[0] == "0"  # mode (a): root
    mounts = world.box.file_inside(f"/proc/{main}/mountinfo").read_text().splitlines()
    options = {line.split()[4]: line.split()[5].split(",") for line in mounts}
    assert "ro" in options["/"], options  # ProtectSystem=strict: the OS read-only
    assert "rw" in options[str(STATE)], options  # but for the state (ReadWritePaths=)
    assert "rw" in options[f"{INSIDE}/opt/lavalink-java"], options  # and the fallback's dir
    assert "/systemd-private-" in mounts_at(mounts, "/tmp")  # PrivateTmp=yes
    assert "/systemd/inaccessible/" in mounts_at(mounts, "/root")  # ProtectHome=yes
    assert "ro" in options["/dev"], options["/dev"]  # PrivateDevices=yes: a minimal /dev
    for device in ("kmsg", "vda", "loop-control"):  # real devices the sandbox's /dev has
        if world.box.file_inside(f"/dev/{device}").exists():
            assert not world.box.file_inside(f"/proc/{main}/root/dev/{device}").exists(), device
    # nothing pulled in the boot's housekeeping: the host's directories stay untouched
    for other in ("sysinit.target", "systemd-tmpfiles-setup.service"):
        assert world.show("ActiveState", other) == "inactive", other


def test_protect_system_strict_leaves_only_the_state_writable_under_run(world: World) -> None:
    world.running()
    main = int(world.show("MainPID"))
    mounts = world.box.file_inside(f"/proc/{main}/mountinfo").read_text().splitlines()
    options = {line.split()[4]: line.split()[5].split(",") for line in mounts}
    assert "rw" in options[str(STATE)], options  # the state stays writable either way
    assert "ro" in options["/run"], options["/run"]


def test_watchdog_pings_keep_it_alive(world: World) -> None:
    world.running()
    assert world.show("WatchdogUSec") == f"{TEST_WATCHDOG_SEC}s"
    main = world.show("MainPID")
    first = int(world.show("WatchdogTimestampMonotonic"))
    time.sleep(2.5 * TEST_WATCHDOG_SEC)  # two and a half watchdog periods
    assert world.show("NRestarts") == "0"
    assert world.show("ActiveState") == "active", world.diagnostics()
    assert world.show("MainPID") == main
    assert int(world.show("WatchdogTimestampMonotonic")) > first  # pings arrived


def reloaded(world: World, since: int) -> dict[str, object] | None:
    """The daemon's "reloaded" log line after offset `since`, parsed, if there is one yet."""
    for line in world.log(since).splitlines():
        if '"reloaded"' in line:
            entry: dict[str, object] = json.loads(line)
            return entry
    return None


def reload_to(world: World, text: str) -> int:
    """Put `text` in place as the config and `systemctl reload`; the log offset before it."""
    world.write_config(text)
    size = world.log_size()
    done = world.box.systemctl("reload", UNIT, timeout=60)
    assert done.returncode == 0, done.stderr + world.diagnostics()
    return size


def test_reload_swaps_the_config_and_a_broken_one_is_rejected(world: World) -> None:
    world.running()
    main = world.show("MainPID")
    try:
        # a good change: systemctl reload -> ExecReload= -> SIGHUP -> the new mode is live
        size = reload_to(world, world.good_config(mode="observe"))
        world.until("the reload logged", lambda: reloaded(world, size) is not None, within=20)
        assert (reloaded(world, size) or {})["mode"] == "observe"
        world.until("active again", lambda: world.show("ActiveState") == "active", within=10)
        assert world.show("MainPID") == main and world.show("NRestarts") == "0"
        # a broken file: rejected with a log line naming it, the running config stays
        size = reload_to(world, "mode: [not a mode\n")
        world.until("the rejection logged", lambda: "reload rejected" in world.log(size), within=20)
        rejected = next(line for line in world.log(size).splitlines() if "reload rejected" in line)
        assert json.loads(rejected)["file"] == str(CONFIG)
        assert reloaded(world, size) is None
        world.until("active after it", lambda: world.show("ActiveState") == "active", within=10)
        assert world.show("MainPID") == main and world.show("NRestarts") == "0"
        world.until(
            "evaluating after it",
            lambda: '"evaluated"' in world.log(size).partition("reload rejected")[2],
            within=10,
        )
    finally:
        size = reload_to(world, world.good_config())
        world.until("back in auto mode", lambda: reloaded(world, size) is not None, within=20)
    assert (reloaded(world, size) or {})["mode"] == "auto"


def test_status_names_the_mode_a_reload_switched_to(world: World) -> None:
    world.running()
    try:
        size = reload_to(world, world.good_config(mode="observe"))
        world.until("the reload logged", lambda: reloaded(world, size) is not None, within=20)
        deadline = time.monotonic() + 3 * TEST_WATCHDOG_SEC  # several heartbeats
        while time.monotonic() < deadline:
            status = world.show("StatusText")
            if status.startswith("mode observe; lavalink: "):
                break
            time.sleep(0.2)
        assert status.startswith("mode observe; lavalink: "), status
    finally:
        size = reload_to(world, world.good_config())
        world.until("back in auto mode", lambda: reloaded(world, size) is not None, within=20)


def test_a_reloaded_interval_changes_the_cadence(world: World) -> None:
    world.running()
    slower = re.sub(r"^interval: \S+$", "interval: 5s", world.good_config(), flags=re.MULTILINE)
    assert slower != world.good_config()
    try:
        size = reload_to(world, slower)
        world.until("the reload logged", lambda: reloaded(world, size) is not None, within=20)
        after = world.log_size()
        time.sleep(11)  # two evaluations at 5 s, five at the old 2 s
        stamps = [
            json.loads(line)["timestamp"]
            for line in world.log(after).splitlines()
            if '"event": "evaluated"' in line
        ]
        assert 1 <= len(stamps) <= 3, stamps
    finally:
        size = reload_to(world, world.good_config())
        world.until("back to 2 s", lambda: reloaded(world, size) is not None, within=20)


def test_stop_ends_it_cleanly(world: World) -> None:
    world.running()
    assert world.show("TimeoutStopUSec") == "3min 30s"  # the shipped TimeoutStopSec=210s
    exits = world.host / "state" / "exits"
    before = exits.read_text().splitlines() if exits.exists() else []
    size = world.log_size()
    begun = time.monotonic()
    stopped = world.box.systemctl("stop", UNIT, timeout=240)
    took = time.monotonic() - begun
    assert stopped.returncode == 0, stopped.stderr
    assert world.show("ActiveState") == "inactive", world.diagnostics()
    recorded = exits.read_text().splitlines()[len(before) :]
    # SIGTERM -> a clean exit 0 (not killed, not timed out)
    assert recorded == ["success exited 0"], [*recorded, world.diagnostics()]
    assert took < 30, took  # far inside TimeoutStopSec with no rollback in flight
    assert '"event": "stopped"' in world.log(size), world.log(size)[-3000:]


def test_a_crash_loop_is_rolled_back_by_the_hardened_unit(world: World) -> None:
    world.running()
    assert world.box.systemctl("is-enabled", PRIMARY).stdout.strip() == "enabled"
    assert world.box.unit_state(FALLBACK) == "inactive"
    (world.host / "rust.env").write_text("FAULT_FLAGS=--exit-after 1\n")  # every start crashes
    with contextlib.suppress(httpx.HTTPError):  # and the running one now
        httpx.post(
            f"{stage.SERVICE_URL}/sim/faults",
            json={"crash": {"after": 0, "exit_code": 1}},
            headers={"Authorization": PASSWORD},
            timeout=5,
        )

    def run_ended() -> bool:
        if not (world.host / "state" / "journal.sqlite3").exists():
            return False
        db = world.journal()
        try:
            row = db.execute("SELECT status FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        except sqlite3.OperationalError:
            return False
        finally:
            db.close()
        return row is not None and row["status"] != "running"

    try:
        world.until("a rollback run ended", run_ended, within=90)
    finally:
        (world.host / "rust.env").write_text("FAULT_FLAGS=\n")
    db = world.journal()
    try:
        run = dict(db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone())
        steps = [
            dict(r)
            for r in db.execute(
                "SELECT * FROM steps WHERE run_id = ? ORDER BY seq, id", (run["id"],)
            )
        ]
    finally:
        db.close()
    assert run["status"] == "succeeded", (run, steps, world.diagnostics())
    assert run["trigger"] == "auto"
    assert any(s in run["reason"] for s in ("CrashLoop", "LavalinkDown")), run["reason"]
    assert {s["name"]: s["status"] for s in steps}.items() >= {
        "preflight": "ok",
        "backup": "ok",
        "stop-primary": "ok",
        "carry-config": "ok",
        "start-fallback": "ok",
        "verify": "ok",
    }.items(), steps
    preflight = next(s for s in steps if s["name"] == "preflight")
    assert "Java" in preflight["detail"], preflight  # `java -version` ran under the filter
    assert (world.host / "opt" / "lavalink-java" / "application.yml").is_file()  # carried
    # the switch is real: systemd says so
    assert world.box.unit_state(FALLBACK) == "active"
    assert world.box.unit_state(PRIMARY) == "inactive"
    assert world.box.systemctl("is-enabled", PRIMARY).stdout.strip() == "disabled"
    assert world.box.systemctl("is-enabled", FALLBACK).stdout.strip() == "enabled"
    # and the watchdog kept pinging all through it
    assert world.show("ActiveState") == "active" and world.show("NRestarts") == "0"
