"""The README's install block, run as written into a temporary root, then ``validate``d.

Why: followed literally on a fresh Debian 12 the block once failed -- a relative rules path that
broke once the config sat in /etc, no Lavalink password file, a credential path the config did
not name -- and nothing ran it. This test parses the block out of README.md (the fenced ``sh``
block right after "Install (as root"), so whatever the README says is what gets tested.

Every line runs in bash, from the checkout, with only two textual changes:

- every absolute path under /etc, /usr/lib, /opt and /var/lib moves under a temporary root (a
  prefix). The same prefix is applied to the installed config.yml before ``validate`` reads it,
  so the paths it names (/etc/rollback-watchdog/..., /var/lib/rollback-watchdog, Lavalink's
  /opt/...) resolve inside that root too: the one edit the test makes to what the block
  installed.
- the group ``rollback-watchdog`` (``-g rollback-watchdog``) becomes the test's own group:
  systemd-sysusers, which creates it, is skipped, and only root can give a file a group it is
  not in. The modes are still checked.

Lines that cannot run here are skipped (``SKIPPED`` says why); where later lines depend on them,
the test stands in (``_distribution``, ``_stand_in_package``). A command that is neither known
to run nor known to be skipped fails the test, so a new kind of line needs a decision here. Lines
run with a root shell's plain PATH, so the block has to name the installed console script by
its path, as an operator's shell would need. No root, network or systemd is needed.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
UNIT = ROOT / "systemd" / "rollback-watchdog.service"
ANCHOR = "Install (as root"
CONFIG = Path("/etc/rollback-watchdog/config.yml")
GROUP = "rollback-watchdog"
PASSWORD = "youshallnotpass-0123456789"  # what `read -rs LAVALINK_PASSWORD` would have set
# A root shell's PATH on Debian, without /usr/local: no venv, no console script of a checkout.
PLAIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Commands the test runs (in bash, paths moved under the root).
RUN = frozenset({"install", "sed", "printf", "chmod", "chgrp", "rollback-watchdog"})
# Commands it cannot run, and why. A line runs only if all its commands are in RUN and is
# skipped only if all are here; a mix fails the test.
SKIPPED = {
    "apt-get": "installs Debian packages: root and network. _distribution stands in for the "
    "directories the packages own (/etc/polkit-1/rules.d)",
    "python3": "builds /opt/rollback-watchdog and pip-installs the checkout: network, minutes. "
    "_stand_in_package puts a console script there that runs this checkout",
    "pip": "as python3",
    "systemd-sysusers": "creates the user and group: root (tests/test_packaging.py runs it in a "
    "scratch root); validate needs neither",
    "systemd-tmpfiles": "creates the state directory owned by that user: root (ditto); "
    "validate does not read it",
    "systemctl": "talks to the running systemd",
}
# The directories a Debian 12 with systemd and polkitd has, which the block installs into.
DISTRIBUTION = (
    "etc/systemd/system",
    "usr/lib/sysusers.d",
    "usr/lib/tmpfiles.d",
    "etc/polkit-1/rules.d",
)
# Lavalink as the example config expects it: installed before the block, not by it.
LAVALINK_DIRS = ("opt/lavalink-rust/config", "opt/lavalink-java")
LAVALINK_FILES = ("opt/lavalink-java/Lavalink.jar",)

_MOVED = re.compile(r"(?<![\w.~/$:@-])(?=/(?:etc|usr/lib|opt|var/lib)/)")
_OWN_GROUP = re.compile(rf"(?<=-g ){GROUP}\b|(?<=chgrp ){GROUP}\b")
_SEPARATORS = frozenset({"&&", "||", ";", "|", "&"})


def install_block(readme: str) -> list[str]:
    """The commands of the ``sh`` block right after ANCHOR: continuations joined, comment
    lines dropped."""
    start = readme.index(ANCHOR)
    opening = readme.index("```sh\n", start)
    assert "```" not in readme[start:opening], "the install block must follow its heading"
    body = readme[opening + len("```sh\n") : readme.index("\n```", opening)]
    lines = (line.strip() for line in body.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def moved(root: Path, text: str) -> str:
    """``text`` with every absolute /etc, /usr/lib, /opt and /var/lib path under ``root``.
    Idempotent: a moved path is preceded by a path character, which the pattern skips."""
    return _MOVED.sub(lambda _: str(root), text)


def commands(line: str) -> list[str]:
    """The names of the commands a shell line runs (each pipeline's and list's first word)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    names, first = [], True
    for token in lexer:
        if token in _SEPARATORS:
            first = True
        elif first:
            names.append(Path(token).name)
            first = False
    return names


@dataclass
class Outcome:
    """What running the block did: each line run (as run) and its result, each line skipped."""

    ran: list[tuple[str, subprocess.CompletedProcess[str]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def validate(self) -> subprocess.CompletedProcess[str]:
        found = [done for line, done in self.ran if commands(line) == ["rollback-watchdog"]]
        assert len(found) == 1, f"the block must validate its config once: {self.ran}"
        return found[0]


def run_block(lines: list[str], root: Path, *, env: dict[str, str] | None = None) -> Outcome:
    """Each line in order, as the module docstring says; lines failing are recorded, not
    raised, so a caller can expect a failure."""
    assert re.fullmatch(r"[\w./-]+", str(root)), f"{root}: would need quoting inside the lines"
    assert moved(root, str(root)) == str(root), f"{root}: under a moved prefix, moved twice"
    _distribution(root)
    _stand_in_package(root)
    outcome = Outcome()
    for line in lines:
        names = commands(line)
        if all(name in SKIPPED for name in names):
            outcome.skipped.append(line)
            continue
        unknown = [name for name in names if name not in RUN]
        assert not unknown, f"{line!r}: decide whether {unknown} runs here (RUN) or not (SKIPPED)"
        if names == ["rollback-watchdog"]:
            installed = root / CONFIG.relative_to("/")
            if installed.exists():  # the one edit to what the block installed
                installed.write_text(moved(root, installed.read_text()))
        adapted = moved(root, _OWN_GROUP.sub(str(os.getgid()), line))
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", adapted],
            cwd=ROOT,
            env=_environment() if env is None else env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        outcome.ran.append((adapted, done))
    return outcome


def _environment(**extra: str) -> dict[str, str]:
    return {"PATH": PLAIN_PATH, "LANG": "C.UTF-8", "LAVALINK_PASSWORD": PASSWORD, **extra}


def _distribution(root: Path) -> None:
    """What the machine has before the block: the distribution's directories, and Lavalink."""
    for directory in (*DISTRIBUTION, *LAVALINK_DIRS):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for name in LAVALINK_FILES:
        (root / name).write_bytes(b"PK\x03\x04")  # a jar is a zip; validate only reads it


def _stand_in_package(root: Path) -> None:
    """The console script `pip install .` would create, running this checkout instead."""
    script = root / "opt/rollback-watchdog/bin/rollback-watchdog"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m watchdog "$@"\n')
    script.chmod(0o755)


def _mode_and_group(path: Path) -> tuple[int, int]:
    info = path.stat()
    return stat.S_IMODE(info.st_mode), info.st_gid


def test_the_install_block_installs_a_config_that_validates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outcome = run_block(install_block(README.read_text(encoding="utf-8")), root)
    for line, done in outcome.ran:
        assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
    checked = outcome.validate()
    assert "config OK" in checked.stdout, checked.stdout
    assert "rules OK" in checked.stdout, checked.stdout
    assert "--syntax-only" not in checked.stdout  # the secrets and files were checked
    assert "warning:" not in checked.stderr, checked.stderr  # e.g. a password others can read
    assert outcome.skipped, "the block's root-only lines were expected"

    etc = root / "etc/rollback-watchdog"
    own = os.getgid()  # stands for the group rollback-watchdog (see the module docstring)
    # The daemon reads these through its group; nobody else reads them at all.
    assert _mode_and_group(etc / "config.yml") == (0o640, own)
    assert _mode_and_group(etc / "credentials") == (0o750, own)
    password = etc / "credentials/lavalink-password"
    assert _mode_and_group(password) == (0o640, own)
    assert password.read_text().strip() == PASSWORD


def test_the_config_and_the_unit_name_the_same_paths(tmp_path: Path) -> None:
    """One password file for the config and the unit's LoadCredential= line, and the state
    directory the unit's StateDirectory= makes."""
    root = tmp_path / "root"
    outcome = run_block(install_block(README.read_text(encoding="utf-8")), root)
    assert all(done.returncode == 0 for _, done in outcome.ran), outcome.ran
    # Read as installed: the test's prefix is on every path, so take it off once.
    installed = yaml.safe_load((root / CONFIG.relative_to("/")).read_text().replace(str(root), ""))
    unit = UNIT.read_text(encoding="utf-8")
    credential = re.search(r"^#?LoadCredential=lavalink-password:(\S+)$", unit, re.MULTILINE)
    state = re.search(r"^StateDirectory=(\S+)$", unit, re.MULTILINE)
    assert credential is not None and state is not None
    runbook = installed["targets"][0]["runbook"]
    assert runbook["password_file"] == credential.group(1)
    assert installed["state_dir"] == f"/var/lib/{state.group(1)}"
    assert installed["targets"][0]["rules"] == ["/etc/rollback-watchdog/rules/lavalink.yml"]
    assert runbook["flag_file"].startswith(f"/var/lib/{state.group(1)}/")


def _without(needle: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [line for line in lines if needle not in line]


@pytest.mark.parametrize(
    ("change", "env", "expected"),
    [
        pytest.param(
            _without("lavalink-password"),
            None,
            "credentials/lavalink-password does not exist",
            id="no-password-file",
        ),
        pytest.param(
            lambda lines: lines,
            {"PATH": PLAIN_PATH, "LANG": "C.UTF-8"},
            "is empty",
            id="no-LAVALINK_PASSWORD-in-the-shell",
        ),
        pytest.param(
            _without("sed -i"),
            None,
            "rollback-watchdog/../rules/lavalink.yml: cannot read",
            id="relative-rules-path",
        ),
    ],
)
def test_the_test_catches_a_broken_block(
    tmp_path: Path,
    change: Callable[[list[str]], list[str]],
    env: dict[str, str] | None,
    expected: str,
) -> None:
    """What the block once lacked, taken out again: validate (or a line) must fail."""
    lines = change(install_block(README.read_text(encoding="utf-8")))
    outcome = run_block(lines, tmp_path / "root", env=env)
    checked = outcome.validate()
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert expected in checked.stderr, checked.stderr
    assert "config OK" not in checked.stdout


def test_the_block_is_parsed_from_the_readme() -> None:
    lines = install_block(README.read_text(encoding="utf-8"))
    assert any(line.startswith("install ") for line in lines)
    assert not any(line.startswith("#") for line in lines)
    assert all(not line.endswith("\\") for line in lines)  # continuations were joined
    assert commands("a -x 's|b;c|d|' f && b/c x | d; e >/f") == ["a", "c", "d", "e"]
    root = Path("/tmp/r")
    assert moved(root, "install a /etc/x /usr/lib/y '/opt/z' x/etc/w") == (
        "install a /tmp/r/etc/x /tmp/r/usr/lib/y '/tmp/r/opt/z' x/etc/w"
    )
    assert moved(root, moved(root, "/var/lib/a")) == "/tmp/r/var/lib/a"
    assert moved(root, "/dev/null /run/credentials/x") == "/dev/null /run/credentials/x"
