# Stylebase: `make run` starts the stack, `make test` checks everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test generate check-generated lint format breaking pytest migrate seed-demo \
	faults bench bench-profile-store bench-similarity bench-analytics bench-cache-gateway bench-http-api \
	bench-backup bench-import clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,parquet]'
	touch $(STAMP)

# redis-server backs the tests, and chromium (headless) checks the HTTP API's docs page:
# Debian's packages, from PATH.
install: $(STAMP)
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (Debian packages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

run: install
	$(BIN)/stylebase up

migrate: install
	$(BIN)/stylebase migrate

seed-demo: install
	$(BIN)/stylebase seed-demo

generate: $(STAMP)
	$(BIN)/python scripts/gen_protos.py gen

# Fails when the committed generated code differs from what the protos give.
check-generated: $(STAMP)
	@rm -rf .gen-check && $(BIN)/python scripts/gen_protos.py .gen-check >/dev/null
	@diff -r gen .gen-check >/dev/null || { diff -r gen .gen-check | head -20; rm -rf .gen-check; \
	  echo "gen/ is out of date: run 'make generate' and commit"; exit 1; }
	@rm -rf .gen-check && echo "generated code is up to date"

lint: $(STAMP)
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services tests bench scripts

format: $(STAMP)
	$(BIN)/buf format -w
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Compares the protos with those on the main branch.
breaking: $(STAMP)
	$(BIN)/buf breaking --against '.git#branch=main'

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)

test: install check-generated lint pytest

# The full fault-injection runs: restarts, outages, stalls, partitions, fuzzing (see README).
faults: install
	$(BIN)/pytest -m faults tests/faults -s $(PYTEST_ARGS)

bench-profile-store: install
	$(BIN)/python -m bench.profile_store

bench-similarity: install
	$(BIN)/python -m bench.similarity

bench-analytics: install
	$(BIN)/python -m bench.analytics

bench-cache-gateway: install
	$(BIN)/python -m bench.cache_gateway

bench-http-api: install
	$(BIN)/python -m bench.http_api

# Base backup and restore of 100k profiles and 1M generations, WAL per 10,000 saves.
bench-backup: install
	$(BIN)/python -m bench.backup $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .gen-check .mypy_cache .ruff_cache .pytest_cache

bench-import: install
	$(BIN)/python -m bench.import_profiles $(BENCH_ARGS)
