# One entry point for users and CI: `make demo`, `make test`, `make lint`, `make bench`, `make soak`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/faiss-builder demo

test: install
	$(PY) -m pytest -q -m "not soak"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) -m bench

soak: install
	$(PY) -m pytest -q -m soak tests/reliability

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-store
