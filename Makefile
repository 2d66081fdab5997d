# Shortlist developer entry points. Everything runs from the project-local .venv,
# installed from the committed lock (requirements/lock.txt).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# A local wheel directory (e.g. one holding the CPU build of torch) is honoured when
# the environment names it, as pip does; uv does not read pip's configuration itself.
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)
DATASET ?= ../shared/datasets/ml-100k
export DVC_NO_ANALYTICS := 1

.PHONY: install lock test test-e2e lint format demo repro up down clean screenshots

$(BIN)/.installed: requirements/lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	$(BIN)/uv pip sync -q --python $(BIN)/python $(FIND_LINKS) requirements/lock.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@# Byte-compile once: with PYTHONDONTWRITEBYTECODE set (as on some CI images) every
	@# process would otherwise recompile Airflow, MLflow, GX and torch on each import.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib/python3.11/site-packages > /dev/null || true
	touch $@

install: $(BIN)/.installed ## create .venv from the lock

lock: install ## re-resolve requirements/requirements.in into the lock
	$(BIN)/uv pip compile requirements/requirements.in --python-version 3.11 $(FIND_LINKS) \
	  --no-emit-find-links --no-header --no-annotate -o requirements/lock.txt

test: install ## lint, then the test suite but the end-to-end suites (starts its own MLflow and S3 servers)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q tests -m "not e2e"

test-e2e: install ## the end-to-end suites: browser + local stack, fault injection, dvc repro from a clone
	$(BIN)/python -m pytest -q tests -m e2e

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

demo: install ## the main job end to end on the embedded defaults
	$(BIN)/python -m shortlist.demo --dataset "$(DATASET)"

repro: install ## dvc repro of dvc.yaml on the embedded default data (or data.path), then its metrics
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc metrics show

clean:
	rm -rf .shortlist

up: install ## start the local stack (MLflow :5000, Airflow :8080, API); prints URLs and logins
	$(BIN)/python -m shortlist.stack up

down: ## stop the local stack (what `make up` and `make demo` started), cleanly
	$(BIN)/python -m shortlist.stack down

screenshots: install ## the browser tests, keeping their screenshots in docs/ (README pictures)
	SHORTLIST_SCREENSHOTS="$(CURDIR)/docs" $(BIN)/python -m pytest -q tests/ui
