"""The Docker-mode drop-in, systemd/rollback-watchdog.service.d/docker-mode.conf, on top of the
main unit (mode (b)): it adds the Docker socket's group and weakens nothing, and systemd's own
``systemd-analyze security --offline=true`` scores the pair at no more than the figure the
drop-in and the README document. Like tests/test_packaging.py, the units are copied into a
temporary root (``--root``) and nothing talks to a running manager.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.test_packaging import needs_offline_analyze

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "rollback-watchdog.service"
DROP_IN = REPO / "systemd" / "rollback-watchdog.service.d" / "docker-mode.conf"
README = REPO / "README.md"
# What the drop-in may set, and nothing else: the socket's group, and the order against the
# engine. Anything more would be a change to the main unit's sandbox that needs its own review.
ALLOWED = {("Unit", "After"), ("Service", "SupplementaryGroups")}
DOCUMENTED = re.compile(r"scores the main unit plus this drop-in at (\d+\.\d+)")
OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")

Assignments = list[tuple[str, str, str]]  # (section, key, value), in file order


def parse(text: str) -> Assignments:
    """A unit file's assignments; continuation lines joined, comments dropped."""
    found: Assignments = []
    section = ""
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines, "").strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"not an assignment in a section: {line!r}"
        found.append((section, key.strip(), value.strip()))
    return found


def effective(*texts: str) -> dict[tuple[str, str], list[str]]:
    """Each setting after the drop-ins: a list setting accumulates, an empty value resets it."""
    merged: dict[tuple[str, str], list[str]] = {}
    for text in texts:
        for section, key, value in parse(text):
            earlier = merged.get((section, key), [])
            merged[(section, key)] = [] if value == "" else [*earlier, value]
    return merged


def documented_exposure() -> float:
    match = DOCUMENTED.search(DROP_IN.read_text())
    assert match, f"{DROP_IN.name} must say what systemd-analyze scores the pair at"
    return float(match.group(1))


def test_the_drop_in_adds_the_docker_group_and_nothing_else() -> None:
    assignments = parse(DROP_IN.read_text())
    assert ("Service", "SupplementaryGroups", "docker") in assignments
    assert ("Unit", "After", "docker.service") in assignments
    extra = [a for a in assignments if (a[0], a[1]) not in ALLOWED]
    assert extra == [], f"the drop-in changes more than the socket's group: {extra}"


def test_the_main_units_hardening_is_unchanged_with_the_drop_in() -> None:
    main = effective(UNIT.read_text())
    both = effective(UNIT.read_text(), DROP_IN.read_text())
    for (section, key), value in main.items():
        if section == "Service":
            assert both[(section, key)] == value, f"{key}= changed by the drop-in"
    assert both[("Service", "User")] == ["rollback-watchdog"]  # mode (b), not root
    assert both[("Service", "NoNewPrivileges")] == ["yes"]
    assert both[("Service", "CapabilityBoundingSet")] == []  # reset to empty: no capabilities
    assert both[("Service", "AmbientCapabilities")] == []
    assert both[("Service", "ProtectSystem")] == ["strict"]
    assert both[("Service", "SupplementaryGroups")] == ["docker"]


def test_the_readme_and_the_drop_in_give_the_same_figure() -> None:
    figure = documented_exposure()
    row = next(line for line in README.read_text().splitlines() if line.startswith("| exposure ("))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == 4 and float(cells[3]) == figure, row  # root, (b), (b) + Docker


@needs_offline_analyze
def test_exposure_with_the_drop_in_stays_at_the_documented_figure(tmp_path: Path) -> None:
    """Scored in a copy: given the repository's path, systemd-analyze would also apply the
    root-mode drop-in that sits next to this one."""
    system = tmp_path / "root" / "etc" / "systemd" / "system"
    (system / DROP_IN.parent.name).mkdir(parents=True)
    shutil.copy(UNIT, system / UNIT.name)
    shutil.copy(DROP_IN, system / DROP_IN.parent.name / DROP_IN.name)
    done = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            "--no-pager",
            f"--root={tmp_path / 'root'}",
            UNIT.name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    match = OVERALL.search(done.stdout)
    assert match, f"no overall exposure in:\n{done.stdout}\n{done.stderr}"
    assert "Service runs with supplementary groups" in done.stdout  # the drop-in was read
    assert "Service runs under a static non-root user identity" in done.stdout
    assert float(match.group(1)) <= documented_exposure(), done.stdout
