"""The watchdog's exceptions, one hierarchy, so callers can tell bad input from a broken world.

    WatchdogError
    ├── InputError            bad input from a person: the CLI exits 2, HTTP answers 4xx
    │   ├── ConfigError       a config file is wrong (names file, line, field)
    │   ├── RulesError        a rules file is wrong (names file, group, rule, line)
    │   └── BadRequest        an HTTP request body is wrong (names the field)
    ├── SourceError           a source could not answer (Prometheus down, timeout)
    │   ├── QueryFailed       one query failed; ``retryable`` says if trying again can help
    │   └── Unreachable       the daemon's API did not answer the CLI
    ├── DeliveryError         a notifier could not deliver a message
    │   ├── DeliveryFailed    after its retries (safe to log: no token, no URL path)
    │   └── CallFailed        one call of a notifier's API (the method and the error code)
    ├── ExecutorError         the runbook could not do its part
    │   ├── SystemdError      a systemd call failed or did not finish in time
    │   │   └── NoAnswer      the bus took the connection but never answered (try again)
    │   └── StepFailed        one step failed; the message is what the journal shows
    ├── FleetError            the fleet's PostgreSQL could not do what was asked
    │   ├── FleetUnreachable  it cannot be used (no answer in time, a broken connection, a
    │   │                     broken schema): the node guards itself on local evidence only
    │   └── FleetBusy         a passing conflict (deadlock, lock or serialization): ask again
    ├── RunInFlight           a run of this target is already going (``run_id`` to join)
    └── JournalLost           the journal file was deleted or replaced under the daemon: no
                              new action is taken until an operator restarts it

Expected failures inside the loop (a failed query) are data, not exceptions: see
``model.QueryResult``. These exceptions are for the edges: loading, the CLI, wiring, adapters.
"""

from __future__ import annotations


class WatchdogError(Exception):
    """Base of every error the watchdog raises on purpose."""


class InputError(WatchdogError):
    """Something a person gave us is wrong; nothing was changed."""


class ConfigError(InputError):
    """A configuration file is invalid."""


class RulesError(InputError):
    """A rules file is invalid."""


class BadRequest(InputError):
    """An HTTP request's body or parameters are wrong; ``message`` is the 400's body."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SourceError(WatchdogError):
    """A data source could not be reached or did not answer."""


class QueryFailed(SourceError):
    """One query failed; ``retryable`` says whether trying again could help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Unreachable(SourceError):
    """The daemon did not answer the CLI: not bad input; exit 3, as for any peer that does not
    answer."""


class DeliveryError(WatchdogError):
    """A notifier could not deliver a message."""


class DeliveryFailed(DeliveryError):
    """A request that did not succeed after its retries; safe to log (no token, no URL path)."""

    def __init__(self, reason: str, *, status: int | None, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status  # the last HTTP status, None when there was no answer
        self.attempts = attempts


class CallFailed(DeliveryError):
    """One call of a notifier's Web API that did not succeed: the method and the error code."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"{method}: {error}")
        self.method = method
        self.error = error


class ExecutorError(WatchdogError):
    """The runbook could not do its part."""


class ManagerError(ExecutorError):
    """A service manager (systemd, Docker) refused a call or did not finish it in time."""


class SystemdError(ManagerError):
    """A systemd call failed or did not finish in time; the message says which and why."""


class NoAnswer(SystemdError):
    """The bus accepted the connection but never answered: worth one more try."""


class StepFailed(ExecutorError):
    """A step could not do its part; the message is what the journal and the operator see."""


class FleetError(WatchdogError):
    """The fleet store could not do what was asked. The message names the failure's kind
    only: a driver's own text may carry the DSN."""


class FleetUnreachable(FleetError):
    """The fleet store cannot be used now: no connection, no answer in time, or an answer that
    says it is broken (a missing schema): the same to a node, which then guards itself."""


class FleetBusy(FleetError):
    """A passing conflict in the store (a deadlock, a lock or serialization failure): nothing
    was changed; the next evaluation asks again. Never a reason to act alone."""


class RunInFlight(WatchdogError):
    """A run for this target is already in flight; ``run_id`` is the one to join."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"run #{run_id} is already in flight")
        self.run_id = run_id


class JournalLost(WatchdogError):
    """The journal's file is not the one the daemon opened (deleted, or replaced): nothing it
    writes now would survive a restart, so no new action is taken (HTTP answers 503)."""
