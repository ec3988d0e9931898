"""The watchdog's exceptions, so callers can tell bad input from a broken world.

    WatchdogError
    ├── InputError            bad input from a person: the CLI exits 2, HTTP answers 4xx
    │   ├── ConfigError       a config file is wrong (names file, line, field)
    │   └── RulesError        a rules file is wrong (names file, group, rule, line)
    ├── SourceError           a source could not answer (Prometheus down, timeout)
    └── JournalLost           the journal file was deleted or replaced under the daemon: no
                              new action is taken until an operator restarts it

Expected failures inside the loop (a failed query) are data, not exceptions: see
``model.QueryResult``. These exceptions are for the edges: loading, the CLI, wiring.
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


class SourceError(WatchdogError):
    """A data source could not be reached or did not answer."""


class JournalLost(WatchdogError):
    """The journal's file is not the one the daemon opened (deleted, or replaced): nothing it
    writes now would survive a restart, so no new action is taken (HTTP answers 503)."""
