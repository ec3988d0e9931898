"""The systemd sandbox: a real systemd as PID 1 of a throwaway namespace, leaving the host alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from watchdog_lab.sandbox import (
    INSIDE_DIR,
    Sandbox,
    SandboxUnavailable,
    booted_systemd,
    kept_paths,
    unavailable_reason,
)

REASON = unavailable_reason()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

HOST_TMP = Path("/tmp")

SLEEPER = """\
[Unit]
Description=sandbox test sleeper
DefaultDependencies=no

[Service]
Type=simple
ExecStart=/usr/bin/sleep 1000

[Install]
WantedBy=wd-test.target
"""

FAILING = """\
[Unit]
Description=sandbox test failing service
DefaultDependencies=no

[Service]
ExecStart=/bin/false
"""

# Writes its PID (as the namespace sees it) atomically, then sleeps until killed.
LOOP = """\
import os, sys, time
path = sys.argv[1]
with open(path + ".tmp", "w") as stream:
    stream.write(str(os.getpid()))
os.rename(path + ".tmp", path)
while True:
    time.sleep(0.1)
"""

# The daemon's way in: its own systemd adapter (dbus-fast) on the private socket. A namespaced
# systemd sometimes leaves a fresh connection's Hello unanswered; the adapter's connect retries
# (short attempts) are part of what is tested here.
DBUS_PROBE = """\
import asyncio, sys
from watchdog.executor.systemd import Systemd

async def main() -> None:
    systemd = await Systemd.connect(sys.argv[1], call_timeout=10)
    try:
        print((await systemd.status(sys.argv[2])).unit_file_state)
    finally:
        systemd.close()

asyncio.run(main())
"""


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(0.01)


def dead(proc_dir: Path) -> bool:
    """Gone or a zombie. A program killed with its nsenter is reparented to the host's init (the
    dead parent's namespace's reaper), which may take a while to reap it."""
    try:
        state = (proc_dir / "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def main_pid(sandbox: Sandbox, unit: str) -> int:
    return int(sandbox.systemctl("show", "-P", "MainPID", unit).stdout)


def host_pid(sandbox: Sandbox, inner_pid: int) -> int:
    """The host PID of the process the sandbox knows as `inner_pid` (from NSpid)."""
    namespace = os.readlink(f"/proc/{sandbox.pid}/ns/pid")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns/pid") != namespace:
                continue
            status = (entry / "status").read_text()
        except OSError:
            continue
        nspids = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid"))
        if int(nspids[-1]) == inner_pid:
            return int(nspids[0])
    raise AssertionError(f"no host process is PID {inner_pid} in the sandbox")


def modified_ago(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


def tree(directory: Path) -> list[tuple[str, str]]:
    """Every path under `directory` with its symlink target ("" for files and directories)."""
    found = []
    for root, directories, files in os.walk(directory):
        for name in directories + files:
            path = Path(root) / name
            found.append((str(path), os.readlink(path) if path.is_symlink() else ""))
    return sorted(found)


def test_simple_service_starts_and_runs_inside(tmp_path: Path) -> None:
    with booted_systemd(tmp_path, {"sleeper.service": SLEEPER}) as sandbox:
        assert sandbox.unit_state("sleeper.service") == "inactive"
        started = sandbox.systemctl("start", "sleeper.service")
        assert started.returncode == 0, started.stderr
        assert sandbox.unit_state("sleeper.service") == "active"
        pid = main_pid(sandbox, "sleeper.service")
        assert pid > 1
        command = sandbox.file_inside(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert command[:2] == [b"/usr/bin/sleep", b"1000"]

        stopped = sandbox.systemctl("stop", "sleeper.service")
        assert stopped.returncode == 0, stopped.stderr
        assert sandbox.unit_state("sleeper.service") == "inactive"
        assert not sandbox.file_inside(f"/proc/{pid}").exists()


def test_failing_exec_start_ends_failed(tmp_path: Path) -> None:
    with booted_systemd(tmp_path, {"failing.service": FAILING}) as sandbox:
        sandbox.systemctl("start", "failing.service")
        wait_for(lambda: sandbox.unit_state("failing.service") == "failed")
        result = sandbox.systemctl("show", "-P", "Result", "failing.service")
        assert result.stdout.strip() == "exit-code"


def test_boot_and_enable_leave_host_tmp_and_units_alone(tmp_path: Path) -> None:
    canary = tmp_path / "canary"  # under the host's /tmp: a wipe would take it
    canary.write_text("still here")
    tmp_before = set(os.listdir(HOST_TMP))
    # Other sessions on this machine add and remove their own fresh files meanwhile: compare the
    # entries that have not changed for a minute (a systemd-tmpfiles wipe would take them all).
    settled = {name for name in tmp_before if modified_ago(HOST_TMP / name) > 60}
    units_before = tree(Path("/etc/systemd/system"))

    with booted_systemd(tmp_path, {"sleeper.service": SLEEPER}) as sandbox:
        enabled = sandbox.systemctl("enable", "sleeper.service")
        assert enabled.returncode == 0, enabled.stderr
        link = sandbox.file_inside("/etc/systemd/system/wd-test.target.wants/sleeper.service")
        assert os.readlink(link) == "/etc/systemd/system/sleeper.service"
        assert not Path("/etc/systemd/system/wd-test.target.wants").exists()
        # a private tmpfs, holding only this checkout and venv if they live under /tmp
        kept = {
            p.relative_to(HOST_TMP).parts[0] for p in kept_paths() if p.is_relative_to(HOST_TMP)
        }
        assert set(sandbox.run(["ls", "-A", "/tmp"]).stdout.split()) == kept
        assert sandbox.systemctl("is-enabled", "sleeper.service").stdout.strip() == "enabled"

    tmp_after = set(os.listdir(HOST_TMP))
    assert settled - tmp_after == set()
    assert [name for name in tmp_after - tmp_before if "systemd" in name] == []  # private tmp dirs
    assert tree(Path("/etc/systemd/system")) == units_before
    assert canary.read_text() == "still here"


@pytest.mark.parametrize(
    "unit_section",
    [
        "Description=no setting",
        "DefaultDependencies=yes",
        "DefaultDependencies=no\nDefaultDependencies=yes",
    ],
)
def test_unit_with_default_dependencies_is_refused_before_booting(
    tmp_path: Path, unit_section: str
) -> None:
    bad = f"[Unit]\n{unit_section}\n[Service]\nExecStart=/usr/bin/sleep 1\n"
    with (
        pytest.raises(ValueError, match=r"bad\.service"),
        booted_systemd(tmp_path, {"sleeper.service": SLEEPER, "bad.service": bad}),
    ):
        pytest.fail("booted")
    assert list(tmp_path.iterdir()) == []  # nothing written, so nothing booted


def test_setting_outside_the_unit_section_does_not_count(tmp_path: Path) -> None:
    target = "[Unit]\nDescription=t\n[Service]\nDefaultDependencies=no\n"
    with (
        pytest.raises(ValueError, match=r"wd-test\.target"),
        booted_systemd(tmp_path, {"wd-test.target": target}),
    ):
        pytest.fail("booted")


def test_exit_kills_the_namespace_and_reaps_unshare(tmp_path: Path) -> None:
    with booted_systemd(tmp_path, {"sleeper.service": SLEEPER}) as sandbox:
        systemd = sandbox.pid
        assert Path(f"/proc/{systemd}/comm").read_text().strip() == "systemd"
        unshare = int(Path(f"/proc/{systemd}/stat").read_text().rpartition(")")[2].split()[1])
        assert Path(f"/proc/{unshare}/comm").read_text().strip() == "unshare"
        assert sandbox.systemctl("start", "sleeper.service").returncode == 0
        sleeper = host_pid(sandbox, main_pid(sandbox, "sleeper.service"))

    for pid in (systemd, unshare, sleeper):
        assert not Path(f"/proc/{pid}").exists()  # a zombie would still be listed
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    assert str(unshare) not in children


def test_failed_boot_raises_with_the_logs_and_leaves_nothing_running(tmp_path: Path) -> None:
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    before = set(children.read_text().split())  # other fixtures' servers may be running
    with (
        pytest.raises(SandboxUnavailable, match=r"boot\.log"),
        booted_systemd(tmp_path, {}, boot_timeout=0),
    ):
        pytest.fail("booted")
    assert set(children.read_text().split()) <= before


def test_popen_sigkill_kills_the_program_inside(tmp_path: Path) -> None:
    pid_file = tmp_path / "loop.pid"
    with booted_systemd(tmp_path, {}) as sandbox:
        argv = [sys.executable, "-c", LOOP, str(sandbox.inside(pid_file))]
        with sandbox.popen(argv) as process:
            wait_for(pid_file.exists)
            inner = int(pid_file.read_text())
            program = sandbox.program_pid(process)
            assert program != process.pid  # process.pid is nsenter, the program is its child
            assert host_pid(sandbox, inner) == program

            os.kill(process.pid, signal.SIGKILL)
            assert process.wait(timeout=10) == -signal.SIGKILL

        wait_for(lambda: dead(Path(f"/proc/{program}")))
        assert dead(sandbox.file_inside(f"/proc/{inner}"))


def test_signal_to_program_pid_reaches_the_program(tmp_path: Path) -> None:
    with booted_systemd(tmp_path, {}) as sandbox:
        with sandbox.popen(["/usr/bin/sleep", "1000"], stdout=subprocess.PIPE) as process:
            os.kill(sandbox.program_pid(process), signal.SIGTERM)
            assert process.wait(timeout=10) == -signal.SIGTERM  # nsenter passes the signal on
        assert sandbox.run(["/bin/echo", "ok"], check=True).stdout == "ok\n"


def test_run_timeout_kills_the_program_inside(tmp_path: Path) -> None:
    pid_file = tmp_path / "loop.pid"
    with booted_systemd(tmp_path, {}) as sandbox:
        argv = [sys.executable, "-c", LOOP, str(sandbox.inside(pid_file))]
        with pytest.raises(subprocess.TimeoutExpired):
            sandbox.run(argv, timeout=1)
        inner = int(pid_file.read_text())
        wait_for(lambda: dead(sandbox.file_inside(f"/proc/{inner}")))


def test_venv_dbus_fast_talks_to_the_private_socket(tmp_path: Path) -> None:
    with booted_systemd(tmp_path, {"sleeper.service": SLEEPER}) as sandbox:
        probe = [sys.executable, "-c", textwrap.dedent(DBUS_PROBE), sandbox.bus_address]
        before = sandbox.run([*probe, "sleeper.service"], timeout=30)
        assert (before.returncode, before.stdout.strip()) == (0, "disabled"), before.stderr
        assert sandbox.systemctl("enable", "sleeper.service").returncode == 0
        after = sandbox.run([*probe, "sleeper.service"], timeout=30)
        assert (after.returncode, after.stdout.strip()) == (0, "enabled"), after.stderr


FIRST_TRY_PROBE = """\
import asyncio, sys
from watchdog import errors
from watchdog.executor.systemd import Systemd

async def main() -> None:
    answered = 0
    for _ in range(int(sys.argv[2])):
        try:
            systemd = await Systemd._connect_once(sys.argv[1], 10.0)
        except errors.NoAnswer:
            continue
        answered += 1
        systemd.close()
    print(answered)

asyncio.run(main())
"""


def test_every_connection_is_answered_at_the_first_try_even_under_load(tmp_path: Path) -> None:
    """systemd's private socket drops a Hello that arrives in the same read as BEGIN; dbus-fast
    sends them back to back, so under load most first tries hung (12 of 16; 0 of 12 here without
    the pause) until the adapter paused between them. Each try here is one attempt, without the
    adapter's retries; a 20 ms pause is not a guarantee on a slow machine, so one may miss."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # the load
    try:
        with booted_systemd(tmp_path, {}) as sandbox:
            probe = [sys.executable, "-c", FIRST_TRY_PROBE, sandbox.bus_address, "12"]
            done = sandbox.run(probe, timeout=120)
    finally:
        spinner.kill()
        spinner.wait()
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 11, done.stdout


def test_inside_maps_host_dir_paths(tmp_path: Path) -> None:
    sandbox = Sandbox(pid=1, host_dir=tmp_path)
    assert sandbox.inside(tmp_path / "a" / "b.txt") == INSIDE_DIR / "a" / "b.txt"
    assert sandbox.file_inside("/run/systemd/private") == Path("/proc/1/root/run/systemd/private")
    with pytest.raises(ValueError, match="not under"):
        sandbox.inside(Path("/etc/passwd"))
