# Majordomo Gateway.  `make run` sets everything up and starts the gateway;
# `make test` runs the whole trial suite against the local PostgreSQL.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: build run db test lint clean

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

clean:
	rm -rf $(VENV) bin _trial_temp twisted/plugins/dropin.cache tests/node/node_modules
