# Stylebase: `make run` starts the stack, `make test` checks everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every dependency, transitive ones too, comes from a lock with hashes (requirements/, made
# by `make lock` from the pins in pyproject.toml); the package itself goes in last, alone.
# The dev stamp implies the run stamp: dev.txt holds all of run.txt at the same versions.
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
UV_VERSION := 0.13.9
LOCK_TOOL := .lock-tool

.PHONY: install system-packages lock run test generate check-generated lint format breaking \
	pytest migrate seed-demo client faults bench bench-profile-store bench-similarity bench-analytics \
	bench-cache-gateway bench-http-api bench-backup bench-import scan clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

define install_lock
	$(BIN)/pip install --quiet --require-hashes -r $(1)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
endef

$(STAMP): requirements/dev.txt pyproject.toml | $(BIN)/python
	$(call install_lock,requirements/dev.txt)
	touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): requirements/run.txt pyproject.toml | $(BIN)/python
	$(call install_lock,requirements/run.txt)
	touch $(RUN_STAMP)

# The lock tool is pinned here and kept out of the project's environment.
$(LOCK_TOOL)/bin/uv:
	$(PYTHON) -m venv $(LOCK_TOOL)
	$(LOCK_TOOL)/bin/pip install --quiet uv==$(UV_VERSION)

# Resolves pyproject.toml's pins (and its build-system's, so installs need no network build
# environment) into three locks: service.txt (the image), run.txt (service + embedded, for
# `make run`) and dev.txt (run + dev tools). run and service are constrained by dev, so a
# package has one version in all three. Existing pins are kept; LOCK_ARGS=--upgrade refreshes
# the transitive ones.
UV_COMPILE = $(LOCK_TOOL)/bin/uv pip compile --quiet --generate-hashes --universal \
	--python-version 3.11 --custom-compile-command 'make lock' $(LOCK_ARGS) pyproject.toml -
BUILD_REQUIRES = $(PYTHON) -c 'import tomllib; \
	print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

lock: $(LOCK_TOOL)/bin/uv
	@mkdir -p requirements
	$(BUILD_REQUIRES) | $(UV_COMPILE) --extra embedded --extra dev --extra parquet -o requirements/dev.txt
	$(BUILD_REQUIRES) | $(UV_COMPILE) --extra embedded -c requirements/dev.txt -o requirements/run.txt
	$(BUILD_REQUIRES) | $(UV_COMPILE) -c requirements/dev.txt -o requirements/service.txt

# Debian's packages, from PATH: redis-server backs the tests, chromium (headless) checks the
# HTTP API's docs page, promtool checks the Prometheus rules, and Go with its protobuf and
# gRPC sources builds the Go client the protos generate.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v protoc-gen-go-grpc >/dev/null || missing="$$missing golang-go protoc-gen-go \
	  protoc-gen-go-grpc golang-google-protobuf-dev golang-google-grpc-dev \
	  golang-github-golang-protobuf-1-5-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (Debian packages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

install: $(STAMP) system-packages

run: $(RUN_STAMP)
	$(BIN)/stylebase up

migrate: $(RUN_STAMP)
	$(BIN)/stylebase migrate

seed-demo: $(RUN_STAMP)
	$(BIN)/stylebase seed-demo

generate: $(STAMP)
	$(BIN)/python scripts/gen_protos.py gen

# The stylebase-client wheel (typed clients and the generated code of gen/) into dist/.
client: $(STAMP)
	$(BIN)/pip wheel --quiet --no-deps -w dist clients/python

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
	$(BIN)/mypy shared services tests bench scripts clients/python/src

format: $(STAMP)
	$(BIN)/buf format -w
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# checkov over the rendered manifests and the Dockerfile. checkov is no project dependency (it
# pins much of its own): install it apart, e.g. `python -m venv /tmp/checkov &&
# /tmp/checkov/bin/pip install checkov`, then `make scan CHECKOV=/tmp/checkov/bin/checkov`.
# The accepted findings are explained in README (Deployment).
CHECKOV ?= checkov
CHECKOV_ACCEPTED := CKV_K8S_15,CKV_K8S_35,CKV_K8S_43
scan:
	@rm -rf .scan && mkdir -p .scan && cp Dockerfile .scan/
	kubectl kustomize deploy/kustomize/base > .scan/base.yaml
	kubectl kustomize deploy/kustomize/overlays/production > .scan/production.yaml
	$(CHECKOV) -d .scan --framework kubernetes dockerfile --quiet --compact \
	  --skip-check $(CHECKOV_ACCEPTED)

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
	rm -rf $(VENV) $(LOCK_TOOL) .scan dist .gen-check .mypy_cache .ruff_cache .pytest_cache

# 100,000 profiles through stylebase import, then recall@10 of the similarity search.
bench-import: install
	$(BIN)/python -m bench.import_profiles $(BENCH_ARGS)
