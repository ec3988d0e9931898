"""Journal: schema migrations, WAL, and that incidents and decisions are kept as decided."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import rule, signal
from watchdog import decision, journal, model

CRASH = rule("CrashLoop")
CPU = rule("CpuHigh", severity="warning")
POLICY = model.Policy()


def step(
    store: journal.Journal, state: model.TargetState, at: float, *signals: model.Signal
) -> tuple[model.Decision, model.TargetState]:
    evaluation = model.Evaluation("lavalink", at, tuple(signals))
    made, state = decision.decide(evaluation, POLICY, state)
    store.record(
        evaluation,
        made,
        mode=model.Mode.OBSERVE,
        outcome="would roll back" if made.action is model.Action.ROLLBACK else "logged",
    )
    return made, state


def test_creates_wal_database_at_latest_schema(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path / "state")
    assert store.schema_version == len(journal.MIGRATIONS)
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()
    again = journal.Journal.open(tmp_path / "state")  # migrations run once
    assert again.schema_version == len(journal.MIGRATIONS)
    again.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    journal.Journal.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / journal.DATABASE_NAME)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this watchdog"):
        journal.Journal.open(tmp_path)


def test_records_verdict_changes_incidents_and_decisions(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    state = model.TargetState()
    state = step(store, state, 0, signal(CRASH, "ok"))[1]
    state = step(store, state, 15, signal(CRASH, "ok"))[1]  # same verdict: no new row
    state = step(store, state, 30, signal(CRASH, "firing"))[1]  # opens, acts
    state = step(store, state, 45, signal(CRASH, "firing"))[1]  # joins, no action
    state = step(store, state, 60, signal(CRASH, "ok"))[1]  # closes
    rows = (
        sqlite3.connect(store.path)
        .execute("SELECT at, verdict FROM evaluations ORDER BY id")
        .fetchall()
    )
    assert rows == [(0.0, "hold"), (30.0, "rollback"), (60.0, "hold")]
    (incident,) = store.incidents()
    assert (
        incident.status,
        incident.verdict,
        incident.acted,
        incident.opened_at,
        incident.closed_at,
    ) == ("resolved", "rollback", "rollback", 30.0, 60.0)
    (made,) = store.decisions()
    assert (made.action, made.outcome, made.incident_id, made.mode) == (
        "rollback",
        "would roll back",
        incident.id,
        "observe",
    )
    assert "CrashLoop firing" in made.reason
    store.close()


def test_state_survives_a_restart(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    state = step(store, model.TargetState(), 0, signal(CRASH, "firing"))[1]
    store.close()
    reopened = journal.Journal.open(tmp_path)
    restored = reopened.target_state("lavalink")
    assert restored.incident == state.incident
    assert restored.incident is not None and restored.incident.acted is model.Verdict.ROLLBACK
    # the restored state does not act again on the same incident
    made, _ = step(reopened, restored, 15, signal(CRASH, "firing"))
    assert made.action is model.Action.NONE
    assert len(reopened.decisions()) == 1
    reopened.close()


def test_cooldown_is_restored_from_the_last_closed_incident(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    state = step(store, model.TargetState(), 0, signal(CPU, "firing"))[1]
    step(store, state, 15, signal(CPU, "ok"))
    restored = store.target_state("lavalink")
    assert (restored.last_closed_at, restored.last_closed_verdict) == (15.0, model.Verdict.WARN)
    store.close()


def test_arming(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    assert store.armed("lavalink")
    store.set_armed("lavalink", False, at=1, by="executor", note="rolled back")
    assert not store.armed("lavalink")
    store.set_armed("lavalink", True, at=2, by="alice", note="re-armed")
    assert store.armed("lavalink")
    store.close()


def test_failed_write_changes_nothing(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    evaluation = model.Evaluation("lavalink", 0, (signal(CRASH, "firing"),))
    made, _ = decision.decide(evaluation, POLICY, model.TargetState())
    broken = model.Evaluation(
        "lavalink",
        0,
        (model.Signal(CRASH, model.SignalState.FIRING, value=1.0, labels=(("x", object()),)),),
    )  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.record(broken, made, mode=model.Mode.OBSERVE, outcome="x")
    assert store.incidents() == []
    assert store.decisions() == []
    assert store.healthy()
    store.close()
