"""rollback-watchdog: rolls a systemd service back to its predecessor when its rules say so.

The package is an application, not a library: nothing is re-exported here. Import the module
you need (``from watchdog import model``). The PyPI filesystem library of the same import name
is never a dependency; ``tests/test_package.py`` guards that this ``watchdog`` is ours.
"""

__version__ = "0.1.0.dev0"
