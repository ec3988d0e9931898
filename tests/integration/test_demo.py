"""`make demo` (`rollback-watchdog demo`): the timeline shows the rollback at the right time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from watchdog import timefmt

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_demo_prints_a_timeline_with_the_rollback_when_the_crash_loop_began(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "watchdog", "demo", "--replay", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    crash = re.search(r"(\S+Z)  lavalink-rust starts crash-looping", out)
    rollback = re.search(r"first rollback: (\S+Z)", out)
    assert crash and rollback, out
    delay = timefmt.parse_instant(rollback.group(1)) - timefmt.parse_instant(crash.group(1))
    assert 0 <= delay <= 180, out
    assert re.search(r"ROLLBACK .*LavalinkCrashLoop firing", out)
    assert re.search(
        r"WARN .*LavalinkSourceFailing firing \{probe=\"loadtracks\", source=\"youtube\"\}", out
    )
    assert "first propose: never" in out
    pid = int(re.search(r"\(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
    assert (
        not os.path.exists(f"/proc/{pid}")
        or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    )
