"""Allows ``python -m watchdog`` as a synonym for the ``rollback-watchdog`` console script."""

from watchdog import cli

raise SystemExit(cli.main())
