# Parley — every target has a "## description"; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= uv
PYTEST_WORKERS ?= 2

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: uv
uv: ## Install uv itself when it is missing
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet uv

.PHONY: install
install: uv ## Install every package and dev tool from the lock file
	$(UV) sync --frozen --all-packages

.PHONY: services-up
services-up: ## Start PostgreSQL, Redis and RabbitMQ on loopback if stopped (install them if missing)
	@bash scripts/services_up.sh

.PHONY: run
run: install ## Start the whole platform on http://localhost:8000 (offline model when no provider key)
	@bash scripts/run.sh

.PHONY: test
test: install services-up ## Run the whole suite against real services (fault tests last, alone)
	$(UV) run --frozen pytest -n $(PYTEST_WORKERS) -m "not chaos" --dist loadfile
	$(UV) run --frozen pytest -m chaos

.PHONY: lint
lint: install ## ruff, format check, mypy, import contracts
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen lint-imports
	$(UV) run --frozen mypy libs/common/src services/gateway/src services/chat/src services/usage/src services/notify/src services/webhooks/src tools/fake_provider/src

.PHONY: format
format: install ## Format and autofix
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

.PHONY: schemas
schemas: install ## Export event JSON Schemas to libs/common/schemas/events
	$(UV) run --frozen python scripts/export_event_schemas.py

.PHONY: clean
clean: ## Remove local run state and caches
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench
bench: install services-up ## Run the benchmarks; numbers go to bench/results/*.json
	$(UV) run --frozen python -m bench.run $(BENCH)
