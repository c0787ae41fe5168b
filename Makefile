# Majordomo Gateway.  `make run` sets everything up and starts the gateway;
# `make test` runs the whole trial suite against the local PostgreSQL.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: build run db test lint clean bench

build: $(VENV)/.installed bin/majordomo

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

bin/majordomo: $(VENV)/.installed
	mkdir -p bin
	ln -sf ../$(VENV)/bin/majordomo bin/majordomo

$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) install --quiet -e '.[test]'
	touch $@

# Creates the database if it is missing and applies schema.sql (idempotent).
db: build
	./bin/majordomo db init

run: db
	./bin/majordomo serve

# The guide's Node.js snippets are tested with the real npm packages.
tests/node/node_modules: tests/node/package.json
	cd tests/node && npm install --no-audit --no-fund --loglevel=error
	touch $@

test: $(VENV)/.test-installed tests/node/node_modules
	$(PY) -m twisted.trial $(TRIAL_ARGS) tests

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check majordomo tests twisted
	$(VENV)/bin/ruff format --check majordomo tests twisted
	$(VENV)/bin/mypy

# End-to-end benchmarks into docs/BENCHMARKS.md (about 10 minutes with the
# default 60 s soak; SOAK=600 for a longer one; BENCH_ARGS="--quick" to try
# it).  Needs wrk (installed with apt-get when missing) and the local
# PostgreSQL (database majordomo_bench).  Uses the venv as it is (builds it
# only when missing), so a benchmark never reinstalls packages under a test run.
SOAK ?= 60
bench:
	@test -f $(VENV)/.test-installed || $(MAKE) $(VENV)/.test-installed
	@command -v wrk >/dev/null || apt-get install -y wrk || \
		{ echo "bench needs wrk: apt-get install wrk" >&2; exit 1; }
	BENCH_COMMAND="make bench$(if $(filter-out 60,$(SOAK)), SOAK=$(SOAK))$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" \
		$(PY) bench/run.py --soak $(SOAK) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) bin _trial_temp twisted/plugins/dropin.cache tests/node/node_modules
