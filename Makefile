# Every target creates .venv and installs the pinned requirements itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install test lint format run demo bench bench-smoke clean

help:
	@echo "make demo   - the whole workflow offline, on temporary storage"
	@echo "make test   - every test"
	@echo "make run    - start the service (HOST/PORT from .env or the environment)"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - the performance benchmark"

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

run: $(STAMP)
	$(PY) main.py

demo: $(STAMP)
	$(PY) demo.py

# The benchmark's own tools (yt-dlp) go into the same venv, never into requirements.txt.
bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(PY) -m bench --output bench/.work/latest.md

bench-smoke: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(PY) -m bench --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
