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
        firing       text[] NOT NULL DEFAULT '{}',
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
        release     text,
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
    CREATE TABLE fleet_incidents (
        id           bigserial PRIMARY KEY,
        grp          text NOT NULL REFERENCES fleet_groups (name),
        release      text NOT NULL,
        opened_at    timestamptz NOT NULL DEFAULT now(),
        owner_node   text NOT NULL,
        owner_target text NOT NULL,
        verdict      text NOT NULL,
        asks         boolean NOT NULL,
        status       text NOT NULL,
        required     integer NOT NULL,
        expires_at   timestamptz,
        approved_by  text[] NOT NULL DEFAULT '{}',
        decided_at   timestamptz,
        decided_by   text,
        outcome      text NOT NULL DEFAULT '',
        message_channel text,
        message_ts   text,
        quiet_since  timestamptz,
        closed_at    timestamptz
    );
    CREATE UNIQUE INDEX fleet_incidents_open ON fleet_incidents (grp, release)
        WHERE closed_at IS NULL;
    CREATE TABLE fleet_members (
        incident_id     bigint NOT NULL REFERENCES fleet_incidents (id),
        node            text NOT NULL,
        target          text NOT NULL,
        joined_at       timestamptz NOT NULL DEFAULT now(),
        reason          text NOT NULL,
        local_incident  integer,
        local_approval  integer,
        state           text NOT NULL DEFAULT 'waiting',
        PRIMARY KEY (incident_id, node, target)
    );
    CREATE TABLE fleet_waves (
        grp          text NOT NULL REFERENCES fleet_groups (name),
        release      text NOT NULL,
        status       text NOT NULL,
        reason       text NOT NULL,
        proposed_at  timestamptz NOT NULL DEFAULT now(),
        approved_by  text,
        started_at   timestamptz,
        next_at      timestamptz,
        waves        integer NOT NULL DEFAULT 0,
        PRIMARY KEY (grp, release)
    );
    CREATE TABLE fleet_votes (
        id           bigserial PRIMARY KEY,
        incident_id  bigint NOT NULL,
        at           timestamptz NOT NULL DEFAULT now(),
        voter        text NOT NULL,
        via          text NOT NULL,
        approve      boolean NOT NULL,
        counted      boolean NOT NULL,
        message      text NOT NULL,
        nonce        text UNIQUE
    );
    """,
)
"""Each migration, statement by statement (none holds a ``;`` but at its end)."""


def statements(script: str) -> list[str]:
    """A migration's statements, in order."""
    return [part.strip() for part in script.split(";") if part.strip()]
