# Cadre — every target sets itself up: the first run creates .venv and installs the project.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run up test lint fmt typecheck bench schema test-deploy clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The embedded default: local nats-server + every service as a process + the example task.
run: $(STAMP)
	$(BIN)/cadre up --example

## Bring the embedded stack up and keep it running until Ctrl-C.
up: $(STAMP)
	$(BIN)/cadre up

# pytest exits 5 when it collected no tests: that fails here, loudly, never passes quietly
test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check shared services tests
	$(BIN)/ruff format --check shared services tests

fmt: $(STAMP)
	$(BIN)/ruff check --fix shared services tests
	$(BIN)/ruff format shared services tests

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	deploy/scripts/install-redis.sh && $(BIN)/python -m pip install --quiet -e '.[bench]' && $(BIN)/python -m tests.bench

schema: $(STAMP)
	$(BIN)/python -m shared.schema docs/schema

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

## The container deployment for real on podman (installs podman/podman-compose if missing):
## images, compose stack + example task + a killed agent, cluster/TLS configs, testcontainers.
test-deploy: $(STAMP)
	PYTHON=$(abspath $(BIN))/python deploy/scripts/test-deploy.sh
