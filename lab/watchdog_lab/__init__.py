"""The lab: simulated worlds for tests, benchmarks and the demo -- the Lavalink and HTTP-service
simulators, fake Slack and Grafana, synthetic Prometheus history with a throwaway real
Prometheus, the sandbox systemd and the live stage. A separate distribution
(``lab/pyproject.toml``), never in the product's wheel and never imported by the daemon."""
