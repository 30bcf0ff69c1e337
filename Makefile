# Every target creates .venv and installs the pinned requirements itself; `make test`,
# `make bench` and `make demo` also install Debian's ffmpeg when none is on PATH (the service
# prefers it to the bundled one: half the CPU per file, docs/performance.md), and `make test`
# and `make bench` what else they need from apt when it is missing: PostgreSQL (the tests
# start a server of their own), curl (the benchmark posts with it), espeak-ng (the speech
# labels are checked on calls it speaks), Chromium (the pages are checked in a real browser) and
# the recorded speech and music on hold of bench/call_corpus.py (Asterisk's prompts and MOH,
# pocketsphinx's test recordings; found by a file each package installs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install system-packages demo-packages test lint format run demo bench bench-smoke clean

help:
	@echo "make install - the pinned requirements and the diarization-audio command, in .venv"
	@echo "make demo   - the whole workflow offline, on temporary storage (installs ffmpeg and Asterisk's recorded prompts from apt first if missing)"
	@echo "make test   - every test (installs ffmpeg, PostgreSQL and Chromium from apt first if missing)"
	@echo "make run    - start the service (HOST/PORT from .env or the environment)"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - the performance benchmark"

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

# The package itself, editable, so that `.venv/bin/diarization-audio` runs this tree's code.
install: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

# Any initdb will do: the tests make a throw-away cluster with it and never use the system one.
PG_INITDB ?= $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) \
                         $(shell command -v initdb 2>/dev/null))
FFMPEG ?= $(shell command -v ffmpeg 2>/dev/null)
CURL ?= $(shell command -v curl 2>/dev/null)
ESPEAK ?= $(shell command -v espeak-ng 2>/dev/null)
CHROMIUM ?= $(shell command -v chromium 2>/dev/null)
SOUNDS_EN ?= $(wildcard /usr/share/asterisk/sounds/en_US_f_Allison/hello.wav)
SOUNDS_FR ?= $(wildcard /usr/share/asterisk/sounds/fr_CA_f_June/hello.wav)
SPHINX_DATA ?= $(wildcard /usr/share/pocketsphinx/test/data/goforward.raw)
MOH ?= $(wildcard /usr/share/asterisk/moh/*.wav)
APT_MISSING := $(strip $(if $(FFMPEG),,ffmpeg) $(if $(PG_INITDB),,postgresql) $(if $(CURL),,curl) $(if $(ESPEAK),,espeak-ng) \
                       $(if $(CHROMIUM),,chromium) \
                       $(if $(SOUNDS_EN),,asterisk-core-sounds-en-wav) \
                       $(if $(SOUNDS_FR),,asterisk-core-sounds-fr-wav) \
                       $(if $(SPHINX_DATA),,pocketsphinx-testdata) \
                       $(if $(MOH),,asterisk-moh-opsound-wav))
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# The demo converts with the ffmpeg the service prefers; its callers speak Asterisk's recorded
# prompts, and its stereo call holds with its music.
DEMO_MISSING := $(strip $(if $(FFMPEG),,ffmpeg) $(if $(SOUNDS_EN),,asterisk-core-sounds-en-wav) \
                        $(if $(SOUNDS_FR),,asterisk-core-sounds-fr-wav) \
                        $(if $(MOH),,asterisk-moh-opsound-wav))

system-packages:
ifneq ($(APT_MISSING),)
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_MISSING)
else
	@echo "ffmpeg: $(FFMPEG); PostgreSQL server binaries: $(dir $(PG_INITDB)); curl: $(CURL); espeak-ng: $(ESPEAK);" \
	      "chromium: $(CHROMIUM); recorded speech and music on hold: installed"
endif

demo-packages:
ifneq ($(DEMO_MISSING),)
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEMO_MISSING)
endif

test: $(STAMP) system-packages
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

demo: $(STAMP) demo-packages
	$(PY) -m diarization_audio.cli.demo

# The benchmark's own tools (yt-dlp) go into the same venv, never into requirements.txt.
bench: $(STAMP) system-packages
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(PY) -m bench --output bench/.work/latest.md

bench-smoke: $(STAMP) system-packages
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(PY) -m bench --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
