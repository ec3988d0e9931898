"""A real systemd, booted as PID 1 of a throwaway PID + mount namespace, for tests.

The daemon switches units through systemd's D-Bus API. A mock of that API only answers what its
author believed systemd does; these tests need the real manager (job results, ActiveState
transitions, unit-file symlinks). This machine has systemd installed but not running as PID 1, so
`booted_systemd` boots one in a namespace of its own and tears it down afterwards.

Booting systemd is dangerous: with its default target it runs systemd-tmpfiles, which wipes the
host's real /tmp. So the boot script mounts private tmpfs over every directory systemd writes or
cleans (/run, /tmp, /var/tmp, /var/log, /var/lib/systemd, /etc/systemd/system) and refuses to boot
unless each of them is one; systemd boots straight into a test target; and every unit booted must
set `DefaultDependencies=no`, so nothing pulls in sysinit.target and the tmpfiles services.
systemd's console is a pseudo-terminal drained into `<host_dir>/console.log` instead of the
machine's real console. Only one sandbox runs at a time on a machine (a lock on the systemd binary):
their managers would share the host's cgroup hierarchy, and stopping a unit in one would kill the
other's processes in the same cgroup.

What stays shared with the host: /usr, /work, /root and every other directory (so the project's
venv runs inside), the network, and the cgroup hierarchy: cgroup directories the sandbox creates
are removed again after teardown when they are empty and did not exist before.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog_lab import logs

INSIDE_DIR = Path("/run/wd")
SYSTEMD = Path("/lib/systemd/systemd")
# Every directory systemd may write or clean gets a private tmpfs; /run first (it holds INSIDE_DIR).
# (S108: these are the directories hidden from systemd, not temporary files of ours.)
PRIVATE_DIRS = (
    "/run",
    "/tmp",  # noqa: S108
    "/var/tmp",  # noqa: S108
    "/var/log",
    "/var/lib/systemd",
    "/etc/systemd/system",
)
_TOOLS = ("unshare", "nsenter", "setpriv")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP_SUFFIXES = (".scope", ".slice", ".service", ".socket", ".mount", ".swap", ".target")
_LOCK_TIMEOUT_SECONDS = 120.0
_PROBE_TIMEOUT_SECONDS = 15.0
_TEARDOWN_TIMEOUT_SECONDS = 15.0
_BOOT_SCRIPT = """\
#!/bin/bash
# Written by watchdog_lab.sandbox: PID 1 of a throwaway PID + mount namespace (mounts are private).
# Hide every directory systemd would write or clean behind a private tmpfs, then boot systemd.
set -euo pipefail
host_dir=$1
console=$2
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p {inside_dir}
mount --bind "$host_dir" {inside_dir}
{stash_kept}
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
{restore_kept}
for d in /var/log /var/lib/systemd /etc/systemd/system; do
  mount -t tmpfs -o mode=0755 tmpfs "$d"
done
for d in {private_dirs}; do
  if [ "$(stat -f -c %T "$d")" != tmpfs ]; then
    echo "refusing to boot systemd: $d is not a private tmpfs" >&2
    exit 1
  fi
done
# systemd as PID 1 logs to /dev/console: make that a pseudo-terminal the host drains into a file.
mount --bind "$console" /dev/console
{copy_units}
exec {systemd} --system --unit={target} --log-target=console --log-level=info --show-status=no
"""


class SandboxUnavailable(RuntimeError):
    """This machine cannot boot the sandbox, or the sandboxed systemd did not come up."""


@functools.cache
def unavailable_reason() -> str | None:
    """None when this machine can boot the sandbox, else why not (for `pytest.mark.skipif`)."""
    if os.geteuid() != 0:
        return "booting systemd in a namespace needs root"
    for tool in _TOOLS:
        if shutil.which(tool) is None:
            return f"`{tool}` was not found on PATH (util-linux)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is missing or not executable; install the systemd package"
    for directory in PRIVATE_DIRS:
        if not Path(directory).is_dir():
            return f"{directory} does not exist, so no private tmpfs can be mounted over it"
    probe = [
        *_unshare_argv(),
        "/bin/sh",
        "-c",
        "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /tmp",
    ]
    try:
        result = subprocess.run(
            probe,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`{shlex.join(probe)}` failed: {error}"
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        return f"`{shlex.join(probe)}` exited with {result.returncode}: {output}"
    return None


def _unshare_argv() -> list[str]:
    return [
        _tool("unshare"),
        "--pid",
        "--fork",
        "--kill-child",  # unshare's death SIGKILLs the namespace's PID 1, so the whole namespace
        "--mount",
        "--mount-proc",
        "--propagation",
        "private",
    ]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SandboxUnavailable(f"`{name}` was not found on PATH (util-linux)")
    return path


@dataclass(frozen=True)
class Sandbox:
    """A booted sandbox: run programs inside it, read its files from outside.

    Programs run through `nsenter` into the namespace's mount and PID namespaces, as root, with the
    working directory `/` (pass absolute paths). `systemctl` there talks to the private socket.
    """

    pid: int  # host PID of the namespace's systemd (PID 1 inside)
    host_dir: Path  # bind-mounted inside at INSIDE_DIR
    bus_address: str = "unix:path=/run/systemd/private"

    def inside(self, host_path: Path) -> Path:
        """The path inside the sandbox of `host_path`, a path under `host_dir`."""
        for candidate in (Path(os.path.abspath(host_path)), host_path.resolve()):
            if candidate.is_relative_to(self.host_dir):
                return INSIDE_DIR / candidate.relative_to(self.host_dir)
        raise ValueError(f"{host_path} is not under the sandbox's host_dir {self.host_dir}")

    def file_inside(self, path: str) -> Path:
        """The host path that reads `path` as the sandbox sees it (through /proc/<pid>/root)."""
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside and capture its output as text.

        `env` replaces the environment, as in `subprocess.run` (None: inherit ours). On timeout
        nsenter is killed, and with it the program (see `popen`).
        """
        return subprocess.run(
            self._command(argv),
            stdin=subprocess.DEVNULL if input is None else None,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            check=check,
        )

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start `argv` inside, for long-running programs a test may kill; kwargs go to Popen.

        `nsenter --pid` must fork (joining a PID namespace only applies to children), so the
        returned process is nsenter, a host process that waits for the program and exits with its
        status (killed by a signal: the same signal, so `returncode` is e.g. -9). The program runs
        under `setpriv --pdeathsig KILL`: when nsenter dies, by any signal, the kernel SIGKILLs
        the program. So `os.kill(process.pid, SIGKILL)` or `process.kill()` kills the program
        too, and `process.wait()` reaps nsenter. This returns once the program has been exec'd
        (after setpriv armed the death signal), so an immediate kill cannot miss it. To signal
        the program itself (e.g. SIGTERM for a graceful stop) use `program_pid(process)`.
        Stdin defaults to /dev/null; output is text.
        """
        if not kwargs.pop("text", True) or kwargs.get("universal_newlines") is False:
            raise ValueError("Sandbox.popen always opens text streams")
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        process: subprocess.Popen[str] = subprocess.Popen(self._command(argv), text=True, **kwargs)
        with contextlib.suppress(SandboxUnavailable):
            self.program_pid(process)
        return process

    def program_pid(self, process: subprocess.Popen[str], *, timeout: float = 10.0) -> int:
        """The host PID of the program a `popen` process runs (nsenter's only child).

        Waits until the child has exec'd the program (it is no longer nsenter or setpriv).
        """
        deadline = time.monotonic() + timeout
        wrappers = {Path(_tool("nsenter")).name, Path(_tool("setpriv")).name}
        while True:
            children = _children(process.pid)
            if children:
                child = children[0]
                try:
                    executable = Path(os.readlink(f"/proc/{child}/exe")).name
                except OSError:
                    executable = ""  # gone or a zombie: it is not a wrapper any more
                if executable not in wrappers:
                    return child
            if process.poll() is not None:
                raise SandboxUnavailable(
                    f"nsenter (PID {process.pid}) exited with {process.returncode} "
                    "and has no program child"
                )
            if time.monotonic() >= deadline:
                raise SandboxUnavailable(
                    f"nsenter (PID {process.pid}) did not exec its program within {timeout:g} s"
                )
            time.sleep(0.005)

    def systemctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`systemctl ARGS` inside (as root it talks to the private socket); never raises on exit
        status."""
        return self.run(["systemctl", *args], timeout=timeout)

    def unit_state(self, unit: str) -> str:
        """The unit's ActiveState: active, inactive, failed, activating, deactivating, ..."""
        result = self.run(["systemctl", "show", "-P", "ActiveState", unit], timeout=30)
        if result.returncode != 0:
            raise SandboxUnavailable(
                f"systemctl show {unit} exited with {result.returncode}: {result.stderr.strip()}"
            )
        return result.stdout.strip()

    def _command(self, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of arguments, not a string")
        return [
            _tool("nsenter"),
            f"--target={self.pid}",
            "--mount",
            "--pid",
            "--",
            _tool("setpriv"),
            "--pdeathsig",
            "KILL",
            "--",
            *argv,
        ]


@contextlib.contextmanager
def booted_systemd(
    host_dir: Path,
    units: Mapping[str, str],
    *,
    target: str = "wd-test.target",
    boot_timeout: float = 30.0,
) -> Iterator[Sandbox]:
    """Boot systemd into `target` with `units` installed, yield the sandbox, then kill it.

    `units` maps unit file names to unit file text; each must set `DefaultDependencies=no` in its
    [Unit] section (ValueError otherwise, before anything is written or booted). Unless given, the
    target is written as an empty target. Units are installed in /etc/systemd/system (a private
    tmpfs) but not started or enabled: pull them in with `Wants=` in the target, or start them with
    `sandbox.systemctl("start", ...)`. Unit files may refer to files under `host_dir` by their
    inside path (`sandbox.inside(...)`, under /run/wd).

    Writes `host_dir/units/`, `host_dir/boot.sh`, `host_dir/boot.log` (the boot script and
    unshare) and `host_dir/console.log` (systemd's own log). Returns once the private D-Bus socket
    exists and `systemctl is-system-running` answers; raises SandboxUnavailable with the logs'
    tails if that does not happen within `boot_timeout` seconds. On exit SIGKILLs the systemd by
    PID (which ends every process in the namespace), reaps unshare and checks the PID is gone.

    Call it from a thread that outlives the sandbox (normally the main thread): unshare runs with
    a parent-death signal, so if this process dies the sandbox dies with it.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise SandboxUnavailable(reason)
    all_units = dict(units)
    if not target.endswith(".target") or "/" in target:
        raise ValueError(f"target must be a unit file name ending in .target, not {target!r}")
    all_units.setdefault(
        target,
        "[Unit]\nDescription=rollback-watchdog sandbox test target\nDefaultDependencies=no\n",
    )
    for name, text in all_units.items():
        _check_unit(name, text)

    host_dir = host_dir.resolve()
    units_dir = host_dir / "units"
    units_dir.mkdir(parents=True, exist_ok=True)
    for name, text in all_units.items():
        (units_dir / name).write_text(text)
    script = host_dir / "boot.sh"
    script.write_text(_boot_script(all_units, target))
    script.chmod(0o755)
    boot_log = host_dir / "boot.log"
    console_log = host_dir / "console.log"

    with contextlib.ExitStack() as stack:
        stack.enter_context(_host_lock())
        cgroups_before = _cgroup_dirs()
        stack.callback(_remove_new_cgroups, cgroups_before)
        console = stack.enter_context(_drained_pty(console_log))
        log_stream = stack.enter_context(boot_log.open("wb"))
        command = [
            _tool("setpriv"),
            "--pdeathsig",
            "KILL",
            "--",
            *_unshare_argv(),
            "/bin/bash",
            str(script),
            str(host_dir),
            console,
        ]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # keep the terminal's Ctrl-C (ctrl-alt-del for systemd) away
        )
        systemd_pid: list[int] = []
        stack.callback(_tear_down, process, systemd_pid)
        pid = _wait_for_boot(process, host_dir, boot_timeout, boot_log, console_log)
        systemd_pid.append(pid)
        yield Sandbox(pid=pid, host_dir=host_dir)


def _check_unit(name: str, text: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"unit file name must be a plain file name, not {name!r}")
    if _unit_default_dependencies(text) is not False:
        raise ValueError(
            f"unit {name} must set DefaultDependencies=no in its [Unit] section: a unit with "
            "default dependencies pulls in sysinit.target, whose tmpfiles services clean /tmp"
        )


def _unit_default_dependencies(text: str) -> bool | None:
    """The [Unit] section's DefaultDependencies (the last assignment wins), None if unset."""
    value: bool | None = None
    section = ""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, equals, setting = line.partition("=")
        if section == "Unit" and equals and key.strip() == "DefaultDependencies":
            setting = setting.strip().lower()
            value = None if not setting else setting not in ("no", "false", "0", "off", "n", "f")
    return value


def service_unit(description: str, exec_start: str, *, target: str = "wd-test.target") -> str:
    """A simple service unit fit for the sandbox: no default dependencies, wanted by `target`."""
    return (
        f"[Unit]\nDescription={description}\nDefaultDependencies=no\n\n"
        f"[Service]\nType=simple\nExecStart={exec_start}\n\n[Install]\nWantedBy={target}\n"
    )


def kept_paths() -> tuple[Path, ...]:
    """This checkout and its virtualenv, when they live under /tmp or /var/tmp.

    Those get a private tmpfs inside the namespace; a CI clone under /tmp would vanish, and with
    it the Python that the test units and the clients run. They are bound back at their paths.
    """
    project = Path(__file__).resolve().parents[2]
    candidates = (project, Path(sys.prefix).resolve())
    covered = (Path("/tmp"), Path("/var/tmp"))  # noqa: S108 - the dirs hidden from systemd
    kept: list[Path] = []
    for path in candidates:
        if any(path.is_relative_to(dir_) for dir_ in covered) and not any(
            path.is_relative_to(k) for k in kept
        ):
            kept.append(path)
    return tuple(kept)


def _boot_script(units: Mapping[str, str], target: str) -> str:
    copy_units = "\n".join(
        f"cp {shlex.quote(str(INSIDE_DIR / 'units' / name))} /etc/systemd/system/" for name in units
    )
    kept = kept_paths()
    stash = "\n".join(
        f"mkdir -p /run/kept/{i} && mount --bind {shlex.quote(str(p))} /run/kept/{i}"
        for i, p in enumerate(kept)
    )
    restore = "\n".join(
        f"mkdir -p {shlex.quote(str(p))} && mount --bind /run/kept/{i} {shlex.quote(str(p))}"
        for i, p in enumerate(kept)
    )
    return _BOOT_SCRIPT.format(
        stash_kept=stash or "# nothing under /tmp to keep visible",
        restore_kept=restore or "",
        inside_dir=shlex.quote(str(INSIDE_DIR)),
        private_dirs=" ".join(PRIVATE_DIRS),
        copy_units=copy_units,
        systemd=shlex.quote(str(SYSTEMD)),
        target=shlex.quote(target),
    )


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """One sandbox per machine: an advisory lock on the systemd binary, which every process that
    could boot a sandbox can open and none modifies."""
    fd = os.open(SYSTEMD, os.O_RDONLY | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + _LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SandboxUnavailable(
                        f"another systemd sandbox held the lock on {SYSTEMD} for "
                        f"{_LOCK_TIMEOUT_SECONDS:g} s"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _drained_pty(log_file: Path) -> Iterator[str]:
    """A pseudo-terminal whose output a thread copies into `log_file`; yields the terminal's path.

    systemd only logs to a console that is a terminal. We keep the terminal open until the end so
    the reader sees end of file (EIO) only after every writer is gone.
    """
    controller, terminal = os.openpty()
    path = os.ttyname(terminal)

    def drain() -> None:
        with log_file.open("wb") as stream:
            while True:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # EIO: no terminal side open any more
                    return
                if not data:
                    return
                stream.write(data.replace(b"\r\n", b"\n"))
                stream.flush()

    reader = threading.Thread(target=drain, name="sandbox-console", daemon=True)
    reader.start()
    try:
        yield path
    finally:
        os.close(terminal)
        reader.join(timeout=5.0)
        os.close(controller)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _wait_for_boot(
    process: subprocess.Popen[bytes],
    host_dir: Path,
    boot_timeout: float,
    boot_log: Path,
    console_log: Path,
) -> int:
    """The host PID of the namespace's systemd, once its manager answers on the private socket."""
    deadline = time.monotonic() + boot_timeout
    last_answer = ""
    while True:
        if process.poll() is not None:
            raise SandboxUnavailable(
                f"the sandbox exited with {process.returncode} before systemd was up\n"
                + _logs(boot_log, console_log)
            )
        # setpriv execs unshare, whose only child is the namespace's PID 1 (boot.sh, then systemd).
        children = _children(process.pid)
        if children and Path(f"/proc/{children[0]}/root/run/systemd/private").exists():
            probe = Sandbox(pid=children[0], host_dir=host_dir)
            try:
                answer = probe.systemctl("is-system-running", timeout=5).stdout.strip()
            except subprocess.TimeoutExpired:
                answer = ""
            if answer and answer not in ("offline", "unknown"):
                return children[0]
            last_answer = answer
        if time.monotonic() >= deadline:
            raise SandboxUnavailable(
                f"systemd did not answer within {boot_timeout:g} s "
                f"(last `systemctl is-system-running`: {last_answer or 'none'})\n"
                + _logs(boot_log, console_log)
            )
        time.sleep(0.02)


def _tear_down(process: subprocess.Popen[bytes], systemd_pid: list[int]) -> None:
    """SIGKILL the namespace's systemd by PID (the kernel then kills everything in the namespace),
    reap unshare, and check the PID is gone.

    unshare is stopped first so its list of children is final: killed while booting, between
    forking and arming --kill-child, it would leave an unsupervised namespace behind.
    """
    if process.poll() is None:
        os.kill(process.pid, signal.SIGSTOP)
        _wait_until_stopped(process)
        children = _children(process.pid)
        for child in children:  # the namespace's PID 1: systemd, or boot.sh before its exec
            os.kill(child, signal.SIGKILL)
        # With its child killed, unshare reaps it and exits 1 ("sigprocmask unblock failed").
        # Without one, it must never run again: it would fork and boot.
        os.kill(process.pid, signal.SIGCONT if children else signal.SIGKILL)
    try:
        process.wait(timeout=_TEARDOWN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    if systemd_pid:
        deadline = time.monotonic() + _TEARDOWN_TIMEOUT_SECONDS
        while Path(f"/proc/{systemd_pid[0]}").exists():
            if time.monotonic() >= deadline:
                raise SandboxUnavailable(f"sandboxed systemd (PID {systemd_pid[0]}) did not die")
            time.sleep(0.01)


def _wait_until_stopped(process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _TEARDOWN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{process.pid}/stat").read_text()
        except OSError:
            return
        if stat.rpartition(")")[2].split()[0] in ("T", "t", "Z", "X"):
            return
        time.sleep(0.001)


def _cgroup_dirs() -> set[Path]:
    found: set[Path] = set()
    for root, directories, _ in os.walk(_CGROUP_ROOT):
        found.update(Path(root) / directory for directory in directories)
    return found


def _remove_new_cgroups(before: set[Path]) -> None:
    """Remove the empty cgroup directories the sandboxed systemd created for its units."""
    created = [
        path
        for path in _cgroup_dirs() - before
        if path.name.endswith(_CGROUP_SUFFIXES) and not path.is_symlink()
    ]
    for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
        for _ in range(50):
            try:
                path.rmdir()  # the kernel refuses (EBUSY) while a process is still in it
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


def _logs(*files: Path) -> str:
    return "\n".join(f"--- tail of {path}:\n{logs.tail(path)}" for path in files)
