"""The fleet store's schema: versioned migrations, run once each, in order, in a transaction
(``rollback-watchdog migrate``, or at start when ``fleet.migrate_at_start`` allows it)."""

from __future__ import annotations

from collections.abc import Sequence

MIGRATIONS: Sequence[str] = (
    # 1: groups (halted or not); members (a node's target) with their heartbeat lease; the
    # switch slots; each member's runs as its own journal has them; the audit trail
    """
    CREATE TABLE fleet_groups (
        name         text PRIMARY KEY,
        halted_at    timestamptz,
        halted_by    text,
        halt_reason  text
    );
    CREATE TABLE fleet_nodes (
        node         text NOT NULL,
        target       text NOT NULL,
        grp          text NOT NULL REFERENCES fleet_groups (name),
        side         text NOT NULL,
        release      text,
        seen_at      timestamptz NOT NULL,
        lease_until  timestamptz NOT NULL,
        PRIMARY KEY (node, target)
    );
    CREATE INDEX fleet_nodes_grp ON fleet_nodes (grp);
    CREATE TABLE fleet_slots (
        grp       text NOT NULL REFERENCES fleet_groups (name),
        node      text NOT NULL,
        target    text NOT NULL,
        taken_at  timestamptz NOT NULL,
        reason    text NOT NULL,
        PRIMARY KEY (node, target),
        FOREIGN KEY (node, target) REFERENCES fleet_nodes (node, target)
    );
    CREATE TABLE fleet_runs (
        node        text NOT NULL,
        target      text NOT NULL,
        run_id      integer NOT NULL,
        grp         text NOT NULL REFERENCES fleet_groups (name),
        trigger     text NOT NULL,
        status      text NOT NULL,
        reason      text NOT NULL,
        started_at  timestamptz NOT NULL,
        ended_at    timestamptz,
        PRIMARY KEY (node, target, run_id)
    );
    CREATE TABLE fleet_audit (
        id      bigserial PRIMARY KEY,
        at      timestamptz NOT NULL DEFAULT now(),
        grp     text NOT NULL,
        node    text NOT NULL,
        target  text,
        event   text NOT NULL,
        detail  text NOT NULL
    );
    CREATE INDEX fleet_audit_grp ON fleet_audit (grp, id);
    """,
)
"""Each migration, statement by statement (none holds a ``;`` but at its end)."""


def statements(script: str) -> list[str]:
    """A migration's statements, in order."""
    return [part.strip() for part in script.split(";") if part.strip()]
