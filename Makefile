# The two commands of the README: `make test` and `make demo`. Both set everything up first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SYSTEM_BINARIES := prometheus promtool prometheus-alertmanager pkcheck dbus-daemon dockerd
SYSTEM_PACKAGES := prometheus prometheus-alertmanager polkitd dbus-daemon postgresql docker.io

.PHONY: test demo bench bench-rollback bench-detection bench-ingest bench-flood bench-fleet bench-footprint bench-docker mutation lint system-deps clean

$(BIN)/.installed: pyproject.toml lab/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./lab
	touch $@

# The real Prometheus and Alertmanager the tests and the demo run, the real polkitd that
# checks the shipped polkit rule, and PostgreSQL for fleet mode (Debian packages; no main
# cluster is created or started: the tests run private ones).
system-deps:
	@missing=""; for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing initdb"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages $(SYSTEM_PACKAGES) (missing:$$missing)"; \
	    mkdir -p /etc/postgresql-common/createcluster.d; \
	    echo "create_main_cluster = false  # rollback-watchdog's tests run private clusters" \
	      > /etc/postgresql-common/createcluster.d/rollback-watchdog-tests.conf; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing -- run as root, or: sudo apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; \
	  fi; \
	fi

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: system-deps $(BIN)/.installed lint
	$(BIN)/pytest

demo: system-deps $(BIN)/.installed
	$(BIN)/rollback-watchdog demo

bench: system-deps $(BIN)/.installed
	$(BIN)/python bench/backtest.py

bench-rollback: $(BIN)/.installed
	$(BIN)/python bench/rollback.py

bench-detection: system-deps $(BIN)/.installed
	$(BIN)/python bench/detection.py

bench-fleet: system-deps $(BIN)/.installed
	$(BIN)/python bench/fleet.py

# Do the tests bite? mutmut over the pure modules and their fast tests; the score as JSON
mutation: $(BIN)/.installed
	$(BIN)/python bench/mutation.py

bench-ingest: $(BIN)/.installed
	$(BIN)/python bench/ingest.py --alerts 1000 --repeats 20 --rate 500 --duration 30 --json

# BEFORE=DIR: the same flood on another checkout (git worktree add DIR <commit>), for a before/after
bench-flood: $(BIN)/.installed
	$(BIN)/python bench/flood.py --runs 3 $(if $(BEFORE),--code $(BEFORE))

bench-footprint: system-deps $(BIN)/.installed
	$(BIN)/python bench/footprint.py --runs 10

# Docker targets: rollback --local vs the procedure's Method 3 on a private dockerd (root)
bench-docker: system-deps $(BIN)/.installed
	$(BIN)/python bench/docker.py --runs 5

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis mutants
