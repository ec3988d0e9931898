"""The watchdog's own systemd unit and the mode (b) packaging, checked with systemd's own tools.

Everything here runs without a systemd as PID 1. ``systemd-analyze security --offline=true``
(systemd >= 250) scores the unit file on disk. ``systemd-analyze verify --root=DIR`` loads the
units into a throwaway manager, and its debug log shows the boot transaction it would build.
``systemd-sysusers`` and ``systemd-tmpfiles`` with ``--root=DIR`` create the user and the state
directory inside a temporary tree. All of them are confined to a temporary directory (the
host's /etc and /var stay untouched), and none talks to a running manager. A small parser
checks the promises the daemon and the README rely on. These are settings that no tool judges,
such as Type=notify or the stop timeout covering a runbook step.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from watchdog import config

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "rollback-watchdog.service"
ROOT_MODE = REPO / "systemd" / "rollback-watchdog.service.d" / "root-mode.conf"
EXAMPLES = REPO / "packaging" / "examples"
PRIMARY = EXAMPLES / "lavalink-rust.service"
FALLBACK = EXAMPLES / "lavalink-java.service"
SYSUSERS = REPO / "packaging" / "sysusers.d" / "rollback-watchdog.conf"
TMPFILES = REPO / "packaging" / "tmpfiles.d" / "rollback-watchdog.conf"
USER = "rollback-watchdog"
STATE_DIR = Path("/var/lib/rollback-watchdog")
FLAG = STATE_DIR / "lavalink" / "active-fallback"  # mode (b): present = the fallback runs at boot
MAX_EXPOSURE = 2.0  # the issue's bar for mode (b)
MAX_ROOT_MODE_EXPOSURE = 2.5  # the drop-in documents 2.2; more means a capability crept in
# Executables the units name, created as stubs in the verify root (verify checks they exist).
EXECUTABLES = (
    "opt/rollback-watchdog/bin/rollback-watchdog",
    "bin/kill",
    "opt/lavalink-rust/lavalink-rust",
    "usr/bin/java",
)
SYSTEM_UNITS = Path("/usr/lib/systemd/system")  # targets the verify root needs (sysinit, ...)


def _systemd_version() -> int | None:
    if shutil.which("systemd-analyze") is None:
        return None
    done = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=False
    )
    match = re.match(r"systemd (\d+)", done.stdout)
    return int(match.group(1)) if match else None


SYSTEMD = _systemd_version()
needs_offline_analyze = pytest.mark.skipif(
    SYSTEMD is None or SYSTEMD < 250,
    reason=f"systemd-analyze >= 250 needed for --offline (found {SYSTEMD})",
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to the new user needs root")


# --- a unit-file parser that keeps what configparser loses (repeated keys, empty resets) ---


Unit = dict[str, list[tuple[str, str]]]


def parse_unit(*texts: str) -> Unit:
    """Sections -> ordered (key, value) assignments; later texts act as drop-ins."""
    unit: Unit = {}
    for text in texts:
        section = None
        lines = iter(text.splitlines())
        for raw in lines:
            line = raw.strip()
            while line.endswith("\\"):  # continuation lines
                line = line[:-1] + " " + next(lines, "").strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                unit.setdefault(section, [])
                continue
            assert section is not None, f"assignment outside a section: {line!r}"
            key, sep, value = line.partition("=")
            assert sep, f"not an assignment: {line!r}"
            unit[section].append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every assignment of a list setting after the last empty one (which resets it)."""
    found: list[str] = []
    for k, v in unit.get(section, []):
        if k == key:
            found = [] if v == "" else [*found, v]
    return found


def setting(unit: Unit, section: str, key: str) -> str | None:
    """A scalar setting: the last assignment wins; None if never assigned."""
    assigned = [v for k, v in unit.get(section, []) if k == key]
    return assigned[-1] if assigned else None


def seconds(span: str) -> float:
    """A systemd time span such as ``30s``, ``3min 30s`` or ``210`` (seconds)."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, f"not a time span: {span!r}"
    return sum(float(n) * units[u or "s"] for n, u in parts)


def load(path: Path, *drop_ins: Path) -> Unit:
    return parse_unit(*(p.read_text() for p in (path, *drop_ins)))


# --- the watchdog's unit: what the daemon and the README rely on ---


def test_unit_is_a_notify_service_with_a_watchdog() -> None:
    unit = load(UNIT)
    assert setting(unit, "Service", "Type") == "notify"
    assert setting(unit, "Service", "NotifyAccess") == "main"  # the java -version child may not
    watchdog = setting(unit, "Service", "WatchdogSec")
    assert watchdog is not None and seconds(watchdog) > 0
    assert setting(unit, "Service", "ExecStart") == (
        "/opt/rollback-watchdog/bin/rollback-watchdog run"
        " --config /etc/rollback-watchdog/config.yml"
    )
    assert setting(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert setting(unit, "Service", "Restart") == "on-failure"
    assert setting(unit, "Install", "WantedBy") == "multi-user.target"


def test_stop_timeout_lets_the_runbook_step_in_flight_finish() -> None:
    """SIGTERM lets a run reach its next safe point: the stop/start pair (two systemd jobs) or
    the verification, plus 15 s of slack. That is what the daemon waits for at exit."""
    runbook = config.RunbookSettings(url="http://127.0.0.1:2333")
    longest_step = max(2 * runbook.job_timeout, runbook.verify.timeout + runbook.verify.settle) + 15
    stop = setting(load(UNIT), "Service", "TimeoutStopSec")
    assert stop is not None and seconds(stop) >= longest_step, (stop, longest_step)


def test_unit_runs_as_a_static_user_with_a_private_state_directory() -> None:
    unit = load(UNIT)
    assert setting(unit, "Service", "User") == USER  # polkit's subject.user names it
    assert setting(unit, "Service", "Group") == USER
    assert setting(unit, "Service", "DynamicUser") in (None, "no")
    assert values(unit, "Service", "StateDirectory") == [STATE_DIR.name]
    assert setting(unit, "Service", "StateDirectoryMode") == "0700"
    assert values(unit, "Service", "ConfigurationDirectory") == ["rollback-watchdog"]
    assert setting(unit, "Service", "UMask") == "0077"


def test_unit_is_hardened_as_the_issue_asks() -> None:
    unit = load(UNIT)
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert setting(unit, "Service", key) == value, key
    assert values(unit, "Service", "CapabilityBoundingSet") == []  # assigned empty: no caps
    assert ("CapabilityBoundingSet", "") in unit["Service"]
    assert values(unit, "Service", "AmbientCapabilities") == []
    families = " ".join(values(unit, "Service", "RestrictAddressFamilies")).split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]  # D-Bus + NOTIFY_SOCKET, IP
    assert values(unit, "Service", "SystemCallFilter")[0] == "@system-service"


@pytest.mark.parametrize(
    ("key", "forbidden", "why"),
    [
        (
            "ProtectProc",
            {"invisible", "noaccess", "ptraceable"},
            "hides the fallback's /proc/<pid> (user lavalink): verify reads its RSS and CPU",
        ),
        ("ProcSubset", {"pid"}, "hides /proc/net/tcp, where verify finds the service's port"),
        (
            "MemoryDenyWriteExecute",
            {"yes", "true", "1"},
            "the preflight's `java -version` cannot start under it",
        ),
        (
            "PrivateUsers",
            {"yes", "true", "1", "self", "identity"},
            "voids root mode's capabilities; untested with polkit's subject checks",
        ),
        ("DynamicUser", {"yes", "true", "1"}, "the polkit rule needs a stable user name"),
    ],
)
def test_unit_leaves_out_what_would_break_the_runbook(
    key: str, forbidden: set[str], why: str
) -> None:
    for mode, unit in (("mode (b)", load(UNIT)), ("mode (a)", load(UNIT, ROOT_MODE))):
        value = setting(unit, "Service", key)
        assert value not in forbidden, f"{mode}: {key}={value}: {why}"


def test_root_mode_drop_in_runs_as_root_with_only_the_capabilities_verify_needs() -> None:
    unit = load(UNIT, ROOT_MODE)
    assert setting(unit, "Service", "User") == "root"
    caps = set(" ".join(values(unit, "Service", "CapabilityBoundingSet")).split())
    assert caps == {"CAP_DAC_OVERRIDE", "CAP_SYS_PTRACE"}  # files, and /proc/<pid>/fd links
    assert setting(unit, "Service", "Type") == "notify"  # everything else is inherited


# --- systemd's own judgement, offline ---


def exposure(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert match, f"no overall exposure in:\n{done.stdout}\n{done.stderr}"
    return float(match.group(1)), done


@needs_offline_analyze
def test_security_exposure_is_at_most_two(tmp_path: Path) -> None:
    """Mode (b) alone. Given the repository's path, systemd-analyze would also apply the
    root-mode drop-in next to it (systemd/rollback-watchdog.service.d/), so score a copy."""
    root = tmp_path / "root"
    _install(root, UNIT)
    threshold = round(MAX_EXPOSURE * 10)  # --threshold compares ten times the shown score
    score, done = exposure(f"--threshold={threshold}", f"--root={root}", UNIT.name)
    assert "Service runs under a static non-root user identity" in done.stdout
    assert score <= MAX_EXPOSURE, done.stdout
    assert done.returncode == 0, done.stdout + done.stderr


@needs_offline_analyze
def test_root_mode_exposure_with_the_drop_in(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _install(root, UNIT, ROOT_MODE)
    score, done = exposure(f"--root={root}", UNIT.name)
    assert "Service runs as root user" in done.stdout  # the drop-in was read
    assert score <= MAX_ROOT_MODE_EXPOSURE, done.stdout


@needs_offline_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """No unknown keys, no misplaced settings, no bad values, executables where they are
    named (stubs in the root); the root-mode drop-in is loaded with the unit."""
    root = _verify_root(tmp_path)
    _install(root, UNIT, ROOT_MODE, PRIMARY, FALLBACK)
    done = _verify(root, UNIT.name, PRIMARY.name, FALLBACK.name)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # warnings (unknown keys) do not change the exit code


@needs_offline_analyze
def test_both_lavalink_units_get_a_start_job_at_boot(tmp_path: Path) -> None:
    """Both units are enabled; their ConditionPathExists= (checked when each job runs) picks
    the one that really starts. So the boot transaction must keep both start jobs."""
    root = _verify_root(tmp_path)
    _install(root, PRIMARY, FALLBACK)
    _enable(root, PRIMARY, FALLBACK)
    log = _boot_transaction(root)
    for unit in (PRIMARY.name, FALLBACK.name):
        assert f"Installed new job {unit}/start" in log, log
    assert "Fixing conflicting jobs" not in log, log


@needs_offline_analyze
def test_conflicts_would_drop_a_start_job_at_boot(tmp_path: Path) -> None:
    """Why the examples have no Conflicts=. With it, systemd resolves the boot transaction by
    deleting one start job, whichever comes first in its internal order, without looking at
    the conditions. If it deletes the primary's start in the normal state (no flag), no Lavalink
    runs after a reboot. The opposite conditions on one flag file already keep them apart."""
    root = _verify_root(tmp_path)
    _install(root, PRIMARY, FALLBACK)
    for path, other in ((PRIMARY, FALLBACK), (FALLBACK, PRIMARY)):
        installed = root / "etc/systemd/system" / path.name
        text = installed.read_text().replace("[Unit]\n", f"[Unit]\nConflicts={other.name}\n", 1)
        installed.write_text(text)
    _enable(root, PRIMARY, FALLBACK)
    log = _boot_transaction(root)
    assert "Fixing conflicting jobs" in log, log
    started = [u for u in (PRIMARY.name, FALLBACK.name) if f"Installed new job {u}/start" in log]
    assert len(started) == 1, log


# --- mode (b): the flag file, the user, the state directory ---


def test_lavalink_units_switch_on_one_flag_file() -> None:
    primary, fallback = load(PRIMARY), load(FALLBACK)
    assert values(primary, "Unit", "ConditionPathExists") == [f"!{FLAG}"]
    assert values(fallback, "Unit", "ConditionPathExists") == [str(FLAG)]
    for unit, name in ((primary, PRIMARY.name), (fallback, FALLBACK.name)):
        assert values(unit, "Unit", "Conflicts") == [], f"{name}: see the test above"
        assert setting(unit, "Service", "Restart") == "on-failure", name
        assert setting(unit, "Service", "User") == "lavalink", name
        assert (setting(unit, "Service", "WorkingDirectory") or "").startswith("/opt/"), name
        assert values(unit, "Install", "WantedBy") == ["multi-user.target"], name
    assert "lavalink-rust" in (setting(primary, "Service", "ExecStart") or "")
    assert "-jar /opt/lavalink-java/Lavalink.jar" in (
        setting(fallback, "Service", "ExecStart") or ""
    )


def test_sysusers_and_tmpfiles_name_the_units_user_and_state_directory() -> None:
    users = [line.split() for line in _entries(SYSUSERS)]
    assert users[0][:2] == ["u", USER] and users[0][-1] == str(STATE_DIR)
    dirs = {Path(fields[1]): fields for fields in map(str.split, _entries(TMPFILES))}
    assert dirs[STATE_DIR][:5] == ["d", str(STATE_DIR), "0700", USER, USER]
    assert dirs[FLAG.parent][:5] == ["d", str(FLAG.parent), "0700", USER, USER]
    assert FLAG not in dirs  # the flag is the watchdog's to create and remove, never tmpfiles'


@needs_root
@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers / systemd-tmpfiles not installed",
)
def test_sysusers_and_tmpfiles_create_them_in_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    _run_in_root(["systemd-sysusers", f"--root={root}", str(SYSUSERS)], root)
    passwd = {
        line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().split()
    }
    uid, gid, home = int(passwd[USER][2]), int(passwd[USER][3]), passwd[USER][5]
    assert home == str(STATE_DIR)
    _run_in_root(["systemd-tmpfiles", f"--root={root}", "--create", str(TMPFILES)], root)
    for directory in (STATE_DIR, FLAG.parent):
        info = (root / directory.relative_to("/")).stat()
        assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (0o700, uid, gid), directory
    assert not (root / FLAG.relative_to("/")).exists()


# --- helpers ---


def _entries(path: Path) -> list[str]:
    return [s for s in (line.strip() for line in path.read_text().splitlines()) if s[:1] not in "#"]


def _install(root: Path, unit: Path, *others: Path) -> None:
    """Unit files into root/etc/systemd/system, drop-ins into their unit's .d directory."""
    system = root / "etc/systemd/system"
    system.mkdir(parents=True, exist_ok=True)
    for path in (unit, *others):
        if path.parent.name.endswith(".d"):
            (system / path.parent.name).mkdir(exist_ok=True)
            shutil.copy(path, system / path.parent.name / path.name)
        else:
            shutil.copy(path, system / path.name)


def _enable(root: Path, *units: Path) -> None:
    """What `systemctl enable` does for WantedBy=multi-user.target, by hand (no systemctl)."""
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in units:
        (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")


def _verify_root(tmp_path: Path) -> Path:
    """A scratch root with the distribution's units (targets) and stubs for our executables."""
    root = tmp_path / "root"
    if not SYSTEM_UNITS.is_dir():
        pytest.skip(f"{SYSTEM_UNITS} missing: the targets the units hang off are needed")
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for name in EXECUTABLES:
        stub = root / name
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    return root


def _verify(root: Path, *units: str, debug: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "debug" if debug else "notice"}
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def _boot_transaction(root: Path) -> str:
    """systemd's debug log of starting multi-user.target in the scratch root (not run)."""
    done = _verify(root, "multi-user.target", debug=True)
    assert done.returncode == 0, done.stderr
    return done.stderr


def _run_in_root(command: Sequence[str], root: Path) -> None:
    assert root.is_absolute() and root != Path("/") and len(root.parts) > 2, root
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
