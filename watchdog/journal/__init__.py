"""The journal: what the watchdog saw, decided and did, kept in the state directory.

It is the daemon's memory across restarts (is the target armed? is an incident open? what was
already acted on?) and the operators' record afterwards. Only evaluations that changed the
verdict are kept (a row every 15 s would bury the story); every incident and every decision
that asked for an action is kept.

``store.Store`` is what the rest of the watchdog may ask of a journal; ``sqlite.Journal`` is the
embedded default (``schema`` holds its migrations, ``rows`` the frozen read models, and one
module per aggregate: incidents, runs, alerts, approvals). A PostgreSQL store for fleets plugs
in behind the same protocol.
"""

from __future__ import annotations

from watchdog.errors import RunInFlight
from watchdog.journal.core import _plain, process_start
from watchdog.journal.rows import (
    AlertRecord,
    ApprovalAsk,
    ApprovalRow,
    Arming,
    AuditRow,
    DecisionRow,
    EvaluationRow,
    IncidentRow,
    Ingested,
    LatestRow,
    ProbeTurn,
    RunRow,
    SignalRecord,
    StepRow,
    UnroutedRecord,
)
from watchdog.journal.schema import DATABASE_NAME, MIGRATIONS
from watchdog.journal.schema import statements as _statements
from watchdog.journal.sqlite import Journal
from watchdog.journal.store import STORE_ERRORS, Store

__all__ = [
    "DATABASE_NAME",
    "MIGRATIONS",
    "STORE_ERRORS",
    "AlertRecord",
    "ApprovalAsk",
    "ApprovalRow",
    "Arming",
    "AuditRow",
    "DecisionRow",
    "EvaluationRow",
    "IncidentRow",
    "Ingested",
    "Journal",
    "LatestRow",
    "ProbeTurn",
    "RunInFlight",
    "RunRow",
    "SignalRecord",
    "StepRow",
    "Store",
    "UnroutedRecord",
    "_plain",
    "_statements",
    "process_start",
]
