"""The SQLite store: the embedded default, every aggregate on one connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from watchdog.journal.alerts import Alerts
from watchdog.journal.incidents import Incidents
from watchdog.journal.store import Store


class Journal(Incidents, Alerts):
    """One SQLite database; open it with ``Journal.open(state_dir)``."""


if TYPE_CHECKING:
    _KEEPS_THE_PROTOCOL: type[Store] = Journal  # mypy checks the SQLite store against the seam
