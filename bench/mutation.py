"""Do the tests bite? Mutation testing of the pure modules, the score as JSON.

Runs mutmut (its settings are ``[tool.mutmut]`` in pyproject.toml: the pure modules --
evaluation, decision, approval, stats -- against their fast tests) from a clean slate, then
counts: every mutant is killed (a test failed), timed out (the mutant looped: detected too) or
survived. A survivor is either untested ground -- a test to write -- or an equivalent mutant
that no input can tell from the original; those are listed below with the reason, matched by
the line they change, so the score of behaviour-changing mutants is honest and a new survivor
shows up at once.

    make mutation        # or: .venv/bin/python bench/mutation.py [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = Path(sys.executable).with_name("mutmut")


@dataclass(frozen=True)
class Equivalent:
    """A mutant no input can tell apart: the function, the line before and after, and why."""

    function: str
    before: str
    after: str
    why: str


EQUIVALENT = [
    Equivalent(
        "advance",
        "keep_for <= 0",
        "keep_for < 0",
        "with keep_for 0 the kept branch starts at `since = now`, and `now - now < 0` is false",
    ),
    Equivalent(
        "advance",
        "MappingProxyType(current) if current else _EMPTY",
        "MappingProxyType(current) if (current) or True else _EMPTY",
        "an empty read-only mapping either way; only its identity differs",
    ),
    Equivalent(
        "_worse",
        "candidate.active_at < incumbent.active_at",
        "candidate.active_at <= incumbent.active_at",
        "reached only when the two differ, where < and <= agree",
    ),
    Equivalent(
        "ranks",
        "out = [0.0] * len(values)",
        "out = [1.0] * len(values)",
        "every element is assigned its rank before it is read",
    ),
    Equivalent(
        "worse",
        "p_value=min(1.0, p)",
        "p_value=min(2.0, p)",
        "both p-value paths are at most 1 already; the min is a guard",
    ),
    Equivalent(
        "_exact_upper",
        "range(u, n1 * n2 + 1)",
        "range(u, n1 * n2 + 2)",
        "no arrangement has U above n1 * n2: the extra term is 0",
    ),
    Equivalent(
        "_normal_upper",
        "return 1.0",
        "return 2.0",
        "the caller caps the p-value at 1",
    ),
    Equivalent(
        "_act",
        "closed = state.last_closed_at if state.last_closed_at is not None else now",
        "closed = state.last_closed_at if (state.last_closed_at is not None) or True else now",
        "a cooldown is carried only when an incident closed: last_closed_at is never None here",
    ),
    Equivalent(
        "_act",
        "since = inconclusive_since if inconclusive_since is not None else now",
        "since = inconclusive_since if (inconclusive_since is not None) or True else now",
        "decide() always sets inconclusive_since for an inconclusive verdict",
    ),
    Equivalent(
        "_signal",
        "key=lambda f: -(f.ratio or 0.0)",
        "key=lambda f: -(f.ratio or 1.0)",
        "a critical or minor finding always has its ratio (judge sets it); only nodata lacks one",
    ),
    Equivalent(
        "decide",
        "uncompared[0].detail",
        "uncompared[1].detail",
        "both comparison signals come from the same findings: their no-data details are equal",
    ),
    Equivalent(
        "_p",
        "if p_value < 0.001 else",
        "if p_value <= 0.001 else",
        'at exactly 0.001 both read the same: "p < 0.001" and "p = 0.001" name one boundary; no '
        "test statistic here lands on it exactly",
    ),
    Equivalent(
        "_number",
        '"+Inf" if value > 0 else "-Inf"',
        '"+Inf" if value >= 0 else "-Inf"',
        "value is an infinity here: > 0 and >= 0 agree",
    ),
    Equivalent(
        "_number",
        '"+Inf" if value > 0 else "-Inf"',
        '"+Inf" if value > 1 else "-Inf"',
        "value is an infinity here: > 0 and > 1 agree",
    ),
]


def mutmut(*args: str) -> str:
    done = subprocess.run(
        [str(MUTMUT), *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"mutmut {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def diff_of(name: str) -> tuple[str, str]:
    """The removed and the added line of a mutant, stripped."""
    shown = mutmut("show", name)
    removed = [line[1:].strip() for line in shown.splitlines() if line.startswith("- ")]
    added = [line[1:].strip() for line in shown.splitlines() if line.startswith("+ ")]
    return " ".join(removed), " ".join(added)


def equivalent(name: str, before: str, after: str) -> str | None:
    """Why this survivor is equivalent, if it is a known one (its function, its change)."""
    # e.g. watchdog.decision.x__act__mutmut_40 -> _act
    function = re.sub(r"__mutmut_\d+$", "", name.rsplit(".", 1)[-1]).removeprefix("x_")
    for known in EQUIVALENT:
        if known.function == function and known.before in before and known.after in after:
            return known.why
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # a clean slate: no cached verdicts
    started = time.perf_counter()
    mutmut("run", "--max-children", str(args.jobs))
    seconds = time.perf_counter() - started
    statuses: dict[str, str] = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses[name] = status
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    survivors = []
    for name, status in sorted(statuses.items()):
        if status not in ("survived", "no tests"):
            continue
        before, after = diff_of(name)
        survivors.append(
            {
                "mutant": name,
                "before": before,
                "after": after,
                "equivalent": equivalent(name, before, after),
            }
        )
    total = len(statuses)
    detected = counts.get("killed", 0) + counts.get("timeout", 0)
    equivalents = sum(1 for s in survivors if s["equivalent"] is not None)
    behaviour = total - equivalents
    report = {
        "tool": "mutmut " + mutmut("--version").split()[-1],
        "modules": [
            "watchdog/evaluation.py",
            "watchdog/decision.py",
            "watchdog/approval.py",
            "watchdog/stats.py",
            "watchdog/comparison.py",
        ],
        "mutants": total,
        "killed": counts.get("killed", 0),
        "timeout": counts.get("timeout", 0),
        "survived": counts.get("survived", 0),
        "no_tests": counts.get("no tests", 0),
        "equivalent": equivalents,
        "score": round(detected / total, 4) if total else None,
        "score_behaviour_changing": round(detected / behaviour, 4) if behaviour else None,
        "target_behaviour_changing": 0.95,
        "seconds": round(seconds, 1),
        "survivors": survivors,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
