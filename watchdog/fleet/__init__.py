"""Fleet mode: many watchdogs, one PostgreSQL -- nodes with heartbeat leases, switch slots per
group (at most ``max_parallel`` at once), a group halted after a failed switch.

Each host keeps its own journal (a switch resumes after ``kill -9`` without the network); the
fleet store holds what the hosts share. Every decision that must be one for the fleet is taken
in one transaction that locks its group's row (``SELECT ... FOR UPDATE``): transaction-scoped,
so it works behind PgBouncer's transaction pooling, unlike session-level advisory locks. Time
is the database's ``now()``: one clock for every lease.
"""
