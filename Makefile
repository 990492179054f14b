# Flux task runner. `make help` lists the targets.
# `make run` and `make test` each bring .venv up to date first, so a fresh clone needs nothing else.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Apache Beam pins protobuf<7 and the server's generated code needs 7: flux-beam (beam/) lives in a
# second environment with flux-core, flux-backends and the example plugin, never with the server.
BEAM_VENV := .venv-beam
BEAM_BIN  := $(BEAM_VENV)/bin
PROTOS := $(wildcard protos/flux_api/v1/*.proto)
# buf breaking compares the contract with the one on this ref (see CONTRIBUTING in README), and with the
# image of the newest release in protos/CHANGELOG.md, committed under protos/releases/ when it was cut.
BREAKING_AGAINST ?= ../.git\#branch=main,subdir=protos
CONTRACT_RELEASE := $(shell sed -n 's/^## \([0-9][0-9.]*\).*/\1/p' protos/CHANGELOG.md 2>/dev/null | head -n 1)
RELEASE_IMAGE ?= releases/flux_api-v$(CONTRACT_RELEASE).binpb
# The folder both checks run in (a copy of protos/, say); BREAKING_AGAINST and RELEASE_IMAGE are relative to it.
BREAKING_DIR ?= protos

.DEFAULT_GOAL := help
.PHONY: help install run test lint typecheck proto proto-check buf-lint breaking golden pytest clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(VENV)/.installed $(VENV)/.generated $(BEAM_VENV)/.installed ## create .venv (Flux, backends, dev tools, generated code) and .venv-beam

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml core/pyproject.toml backends/pyproject.toml bench/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e clients/python -e core -e "backends[all]" -e '.[all,dev]' -e bench
	@touch $@

$(BEAM_VENV)/.installed: beam/pyproject.toml core/pyproject.toml backends/pyproject.toml examples/flux-backend-ivf/pyproject.toml
	@test -x $(BEAM_BIN)/python || $(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_BIN)/python -m pip install --quiet --upgrade pip
	$(BEAM_BIN)/python -m pip install --quiet -e core -e "backends[hnsw,annoy]" -e "beam[test]" -e examples/flux-backend-ivf
	@touch $@

$(VENV)/.generated: $(VENV)/.installed $(PROTOS) tools/protogen.py
	$(BIN)/python tools/protogen.py
	@touch $@

proto: $(VENV)/.installed ## regenerate clients/python/src/flux_api from protos/
	$(BIN)/python tools/protogen.py
	@touch $(VENV)/.generated

run: install ## serve the demo index on 127.0.0.1:50051 (built on first start); PORT=50052 for another port
	$(BIN)/flux serve $(if $(PORT),--port $(PORT))

test: install lint typecheck pytest ## lint, type-check and run the test suite

lint: install proto-check buf-lint breaking ## ruff, stale generated code, buf lint and buf breaking
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## mypy (strict) over flux, flux-core, the backends, the client, the bench and flux-beam
	$(BIN)/mypy

pytest: install ## the test suite, then the Beam tests in .venv-beam (tests/conftest.py needs the server)
	$(BIN)/pytest
	$(BEAM_BIN)/pytest --noconftest tests/test_beam.py

proto-check: install ## fail when the committed generated code differs from protos/
	$(BIN)/python tools/protogen.py --check

buf-lint: install ## buf lint (STANDARD) over protos/
	cd protos && ../$(BIN)/buf lint

breaking: install ## buf breaking against the contract on main (BREAKING_AGAINST=...) and the newest release's image
	cd $(BREAKING_DIR) && $(abspath $(BIN))/buf breaking --against '$(BREAKING_AGAINST)'
	cd $(BREAKING_DIR) && $(abspath $(BIN))/buf breaking --against '$(RELEASE_IMAGE)'

golden: install ## answer protos/examples/ anew from a fresh server (after an intended change: review the diff)
	$(BIN)/python -m tools.golden record

# Java stubs and example (clients/java).
-include clients/java/java.mk
# Go stubs and example (clients/go).
-include clients/go/go.mk
# Prometheus alerting rules and Grafana dashboard (deploy/monitoring).
-include deploy/monitoring/monitoring.mk

clean: ## remove .venv, .venv-beam, caches and the demo index
	rm -rf $(VENV) $(BEAM_VENV) var .mypy_cache .ruff_cache .pytest_cache
