"""Simulated worlds for tests, benchmarks and the demo: synthetic Prometheus history, a throwaway
real Prometheus server, and (later) the Lavalink simulator. Never imported by the daemon."""
