"""The mode (b) polkit rule, judged by the real polkitd with systemd's real action definitions.

The rule must let the user rollback-watchdog start, stop and restart the two Lavalink units and
nothing else. It must never answer manage-unit-files, which implies manage-units for every
unit. The test does not trust a JavaScript engine of its own. It runs the distribution's
polkitd (polkit 122, duktape) and asks it with pkcheck, the way systemd's checks reach it.

How it stays off the host: polkitd runs in a private mount namespace (``unshare --mount``), where
its two rule directories are bind mounts of a scratch directory holding only this rule.
/etc/passwd and /etc/group there are copies that add the test users. polkitd talks to a private
dbus-daemon on an abstract socket, not to the system bus. No systemd is involved. The subjects
are ``sleep`` processes running as the test users' uids, which exist only inside polkitd's view.

pkcheck's exit status says who decided: 0 = authorized (this rule said YES), 2 = "challenge".
A 2 means no rule answered, so systemd's default policy (auth_admin, which a daemon cannot
satisfy) applied. The rule never answers NO, so every refusal must be a 2.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RULE = REPO / "packaging" / "polkit" / "50-rollback-watchdog.rules"
POLKITD = Path("/usr/lib/polkit-1/polkitd")
TOOLS = ("dbus-daemon", "unshare", "setpriv", "pkcheck", "pkaction", "sleep")
MANAGE_UNITS = "org.freedesktop.systemd1.manage-units"
MANAGE_UNIT_FILES = "org.freedesktop.systemd1.manage-unit-files"
RELOAD_DAEMON = "org.freedesktop.systemd1.reload-daemon"
AUTHORIZED, CHALLENGE = 0, 2  # pkcheck's exit statuses
USERS = ("rollback-watchdog", "lavalink", "rollback-watchdogx")
UNITS = ("lavalink-rust.service", "lavalink-java.service")
VERBS = ("start", "stop", "restart")
START_TIMEOUT = 15.0


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: a mount namespace for polkitd, processes under other uids"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    missing += [str(POLKITD)] if not POLKITD.exists() else []
    if missing:
        return f"missing {', '.join(missing)} (Debian packages polkitd, dbus-daemon)"
    try:
        pwd.getpwnam("polkitd")  # polkitd drops to this user
    except KeyError:
        return "no polkitd user"
    if not Path("/etc/polkit-1/rules.d").is_dir() or not Path("/usr/share/polkit-1").is_dir():
        return "polkit's rule directories are missing"
    return None


REASON = _unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]

_BUS_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>{address}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""
# Runs inside `unshare --mount --propagation private`: the bind mounts die with polkitd.
_POLKITD_SCRIPT = """\
set -eu
mount --bind "$1" /etc/polkit-1/rules.d
mount --bind "$2" /usr/share/polkit-1/rules.d
mount --bind "$3" /etc/passwd
mount --bind "$4" /etc/group
exec "$5"
"""


@dataclass
class Polkit:
    bus: str
    log: Path
    subjects: dict[str, int]  # user name -> pid of a process running as that user

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus}

    def check(self, user: str, action: str, **details: str) -> int:
        command = ["pkcheck", "--action-id", action, "--process", str(self.subjects[user])]
        for key, value in details.items():
            command += ["--detail", key, value]
        done = subprocess.run(
            command, env=self.env(), capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode in (AUTHORIZED, 1, CHALLENGE), done.stderr  # else: pkcheck broke
        return done.returncode


@pytest.fixture(scope="module")
def polkit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Polkit]:
    work = tmp_path_factory.mktemp("polkit")
    rules, empty = work / "rules.d", work / "empty.d"
    for directory in (rules, empty):
        directory.mkdir()
        directory.chmod(0o755)  # polkitd reads them as the user polkitd
    shutil.copy(RULE, rules / RULE.name)
    (rules / RULE.name).chmod(0o644)
    accounts = dict(zip(USERS, _free_ids(len(USERS)), strict=True))  # name -> uid = gid
    passwd, group = work / "passwd", work / "group"
    passwd.write_text(
        Path("/etc/passwd").read_text()
        + "".join(
            f"{u}:x:{i}:{i}:{u}:/nonexistent:/usr/sbin/nologin\n" for u, i in accounts.items()
        )
    )
    group.write_text(
        Path("/etc/group").read_text() + "".join(f"{u}:x:{i}:\n" for u, i in accounts.items())
    )
    passwd.chmod(0o644)
    group.chmod(0o644)
    address = f"unix:abstract=/rollback-watchdog-test-polkit-{secrets.token_hex(8)}"
    (work / "bus.conf").write_text(_BUS_CONFIG.format(address=address))
    log = work / "polkitd.log"
    started: list[subprocess.Popen[bytes]] = []
    try:
        bus = subprocess.Popen(
            ["dbus-daemon", f"--config-file={work / 'bus.conf'}", "--nofork", "--print-address"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        started.append(bus)
        assert bus.stdout is not None
        printed = bus.stdout.readline().decode().strip()  # printed once it listens
        assert printed.startswith(address), f"dbus-daemon did not start: {printed!r}"
        with log.open("wb") as sink:
            started.append(
                subprocess.Popen(
                    [
                        *("unshare", "--mount", "--propagation", "private"),
                        *("sh", "-c", _POLKITD_SCRIPT, "sh"),
                        *(str(p) for p in (rules, empty, passwd, group, POLKITD)),
                    ],
                    env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address},
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            )
        subjects = {}
        for user, uid in accounts.items():
            started.append(
                subprocess.Popen(
                    [
                        *("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"),
                        *("sleep", "infinity"),
                    ]
                )
            )
            subjects[user] = started[-1].pid
        box = Polkit(bus=address, log=log, subjects=subjects)
        _wait_until_serving(box, started[1])
        yield box
    finally:
        for process in reversed(started):
            process.terminate()
        for process in reversed(started):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def test_polkitd_compiles_the_rule_and_loads_nothing_else(polkit: Polkit) -> None:
    log = polkit.log.read_text()
    assert "Finished loading, compiling and executing 1 rules" in log, log
    assert "rror" not in log, log  # "Error compiling script", "Error evaluating ..."


def test_systemds_actions_are_known_and_manage_unit_files_implies_manage_units(
    polkit: Polkit,
) -> None:
    """The reason the rule never grants manage-unit-files, as polkitd reads it from systemd's
    own policy file."""
    for action in (MANAGE_UNITS, MANAGE_UNIT_FILES, RELOAD_DAEMON):
        done = subprocess.run(
            ["pkaction", "--action-id", action, "--verbose"],
            env=polkit.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        if action == MANAGE_UNIT_FILES:
            imply = [line for line in done.stdout.splitlines() if "policykit.imply" in line]
            assert imply and MANAGE_UNITS in imply[0], done.stdout


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("verb", VERBS)
def test_the_watchdog_may_start_stop_and_restart_the_two_units(
    polkit: Polkit, unit: str, verb: str
) -> None:
    assert polkit.check("rollback-watchdog", MANAGE_UNITS, unit=unit, verb=verb) == AUTHORIZED


@pytest.mark.parametrize(
    "verb",
    [
        "reload",
        "try-restart",
        "reload-or-restart",
        "reload-or-try-restart",
        "kill",
        "reset-failed",
        "set-property",
        "freeze",
        "thaw",
        "clean",
        "enable",
        "",
        "START",
    ],
)
def test_other_verbs_fall_through(polkit: Polkit, verb: str) -> None:
    for unit in UNITS:
        assert polkit.check("rollback-watchdog", MANAGE_UNITS, unit=unit, verb=verb) == CHALLENGE


@pytest.mark.parametrize(
    "unit",
    [
        "sshd.service",
        "polkit.service",
        "rollback-watchdog.service",
        "lavalink.service",
        "lavalink-rust",
        "lavalink-java.service.d",
        "LAVALINK-RUST.SERVICE",
        "lavalink-java@x.service",
        " lavalink-java.service",
        "",
    ],
)
def test_other_units_fall_through(polkit: Polkit, unit: str) -> None:
    for verb in VERBS:
        assert polkit.check("rollback-watchdog", MANAGE_UNITS, unit=unit, verb=verb) == CHALLENGE


def test_manage_units_without_details_falls_through(polkit: Polkit) -> None:
    """StartTransientUnit (systemd-run) asks manage-units with no unit and no verb."""
    assert polkit.check("rollback-watchdog", MANAGE_UNITS) == CHALLENGE
    assert polkit.check("rollback-watchdog", MANAGE_UNITS, unit=UNITS[0]) == CHALLENGE
    assert polkit.check("rollback-watchdog", MANAGE_UNITS, verb="start") == CHALLENGE


@pytest.mark.parametrize(
    ("action", "details"),
    [
        (MANAGE_UNIT_FILES, {}),  # what systemd sends for enable/disable
        (MANAGE_UNIT_FILES, {"unit": UNITS[0], "verb": "start"}),  # the imply re-check
        (RELOAD_DAEMON, {}),
        ("org.freedesktop.systemd1.set-environment", {}),
        ("org.freedesktop.login1.reboot", {}),
    ],
)
def test_other_actions_fall_through(polkit: Polkit, action: str, details: dict[str, str]) -> None:
    assert polkit.check("rollback-watchdog", action, **details) == CHALLENGE


@pytest.mark.parametrize("user", [u for u in USERS if u != "rollback-watchdog"])
def test_other_users_fall_through(polkit: Polkit, user: str) -> None:
    for unit in UNITS:
        assert polkit.check(user, MANAGE_UNITS, unit=unit, verb="start") == CHALLENGE


# --- helpers ---


def _free_ids(count: int) -> list[int]:
    """uids (= gids) no account or group uses on this machine, for the namespace's passwd."""
    taken = {p.pw_uid for p in pwd.getpwall()} | {p.pw_gid for p in pwd.getpwall()}
    free = [i for i in range(61000, 62000) if i not in taken]
    return free[:count]


def _wait_until_serving(box: Polkit, polkitd: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if polkitd.poll() is not None:
            pytest.fail(f"polkitd exited ({polkitd.returncode}):\n{box.log.read_text()}")
        done = subprocess.run(
            ["pkaction", "--action-id", MANAGE_UNITS],
            env=box.env(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0:
            return
        time.sleep(0.1)
    pytest.fail(f"polkitd did not serve within {START_TIMEOUT:g}s:\n{box.log.read_text()}")
