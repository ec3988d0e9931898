"""The fleet store's schema: versioned migrations, run once each, in order, in a transaction
(``rollback-watchdog migrate``, or at start when allowed)."""

from __future__ import annotations

from collections.abc import Sequence

MIGRATIONS: Sequence[str] = (
    # 1: groups (halted or not), nodes with their heartbeat lease, the switch slots
    """
    CREATE TABLE fleet_groups (
        name         text PRIMARY KEY,
        halted_at    timestamptz,
        halted_by    text,
        halt_reason  text
    );
    CREATE TABLE fleet_nodes (
        name         text PRIMARY KEY,
        grp          text NOT NULL REFERENCES fleet_groups (name),
        target       text NOT NULL,
        release      text,
        seen_at      timestamptz NOT NULL,
        lease_until  timestamptz NOT NULL
    );
    CREATE INDEX fleet_nodes_grp ON fleet_nodes (grp);
    CREATE TABLE fleet_slots (
        grp       text NOT NULL REFERENCES fleet_groups (name),
        node      text NOT NULL REFERENCES fleet_nodes (name),
        taken_at  timestamptz NOT NULL,
        PRIMARY KEY (grp, node)
    );
    """,
)
"""Each migration, statement by statement (none holds a ``;`` but at its end)."""


def statements(script: str) -> list[str]:
    """A migration's statements, in order."""
    return [part.strip() for part in script.split(";") if part.strip()]
