# The two commands: `make demo` and `make test`. Everything else is a step of theirs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9

.PHONY: help install sysdeps stack demo demo-celery test stop status bench clean

help:
	@echo "make demo   - install, start the local stack and Airflow, load demo data, run the pipelines"
	@echo "make demo-celery - the same demo with Airflow on the CeleryExecutor (Redis, two workers)"
	@echo "make test   - install, then the whole test suite (starts its own stack on free ports)"
	@echo "make bench  - benchmarks; results in bench/results/*.json"
	@echo "make stop   - stop everything make demo started (by pid)"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@echo "[install] pinned requirements + the csl package (editable)"
	@$(VENV)/bin/uv pip install --python $(PY) -q -r requirements-dev.txt -e .
	@touch $@

install: $(STAMP)

sysdeps:
	@bash scripts/sysdeps.sh

stack: install sysdeps
	$(PY) scripts/devstack.py up --airflow

demo: install sysdeps
	@$(PY) scripts/devstack.py up --airflow --monitoring --executor local
	@$(PY) -m csl migrate --with-platform-schema
	@$(PY) -m csl seed --scale demo
	@$(PY) scripts/demo.py

# The same demo on the CeleryExecutor: Redis as the broker, two `airflow celery worker`s
# (README "Running at scale"); `make demo` afterwards switches the stack back to the LocalExecutor.
demo-celery: install sysdeps
	@$(PY) scripts/devstack.py up --airflow --monitoring --executor celery
	@$(PY) -m csl migrate --with-platform-schema
	@$(PY) -m csl seed --scale demo
	@$(PY) scripts/demo.py

test: install sysdeps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: install sysdeps
	$(PY) bench/run.py

stop:
	@if [ -x $(PY) ]; then $(PY) scripts/devstack.py down; else $(PYTHON) scripts/devstack.py down; fi

status:
	@$(PY) scripts/devstack.py status

clean: stop
	@for state in .local/*/; do if [ -e "$$state/stack.json" ]; then $(PY) scripts/devstack.py remove --state "$$state"; fi; done
	rm -rf .local .env
