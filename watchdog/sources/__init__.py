"""Thin adapters that read the world (Prometheus now; probes, systemd, Alertmanager later).

Each source turns what it reads into ``model`` values and reports failures as data
(``QueryResult.error``), never as exceptions that would stop the loop.
"""
