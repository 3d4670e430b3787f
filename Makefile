# Cadre — every target sets itself up: the first run creates .venv and installs the project
# from the committed lock (requirements.txt: every package pinned with its hashes), so a new
# release of any dependency cannot change what `make run` / `make test` install.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
LOCK    = requirements.txt
PYTEST_ARGS ?=
# what `make lock` runs (tests/unit/test_lock.py checks each lock's header names its command):
# the full lock (every extra: what make installs), then two subsets at the same versions: what
# the container image installs (every service and the CLI) and the SDK alone (the base install)
LOCK_CMD = uv pip compile pyproject.toml requirements/build.in --all-extras --generate-hashes \
	--universal --python-version 3.11 -o $(LOCK)
RUNTIME_LOCK_CMD = uv pip compile pyproject.toml requirements/build.in --extra services \
	--generate-hashes --universal --python-version 3.11 -c $(LOCK) -o requirements/runtime.txt
SDK_LOCK_CMD = uv pip compile pyproject.toml requirements/build.in --generate-hashes \
	--universal --python-version 3.11 -c $(LOCK) -o requirements/sdk.txt

.PHONY: run up test test-system lint fmt typecheck bench schema settings-doc lock test-deploy clean

# A changed lock or pyproject rebuilds the venv from scratch: nothing stale survives an upgrade.
$(STAMP): pyproject.toml $(LOCK) requirements/build.in
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

## Upgrade every pinned dependency on purpose (needs the package index); the next target rebuilds
## the venv. uv runs from its own small venv (the version the lock pins), not from .venv, so the
## lock can be remade even when pyproject.toml asks for something .venv cannot satisfy yet.
LOCK_TOOLS = .cadre/lock-tools
lock:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install --quiet "$$(grep -E '^uv==' $(LOCK) | cut -d' ' -f1)"
	$(LOCK_TOOLS)/bin/$(LOCK_CMD) --upgrade
	$(LOCK_TOOLS)/bin/$(RUNTIME_LOCK_CMD)
	$(LOCK_TOOLS)/bin/$(SDK_LOCK_CMD)

## The embedded default: local nats-server + every service as a process + the example task.
run: $(STAMP)
	$(BIN)/cadre up --example

## Bring the embedded stack up and keep it running until Ctrl-C.
up: $(STAMP)
	$(BIN)/cadre up

## The Debian packages the suite drives for real (headless Chromium for the dashboard, ...):
## installed here, before pytest, when missing — never from inside a test.
test-system:
	deploy/scripts/system-packages.sh test

# pytest exits 5 when it collected no tests: that fails here, loudly, never passes quietly
test: $(STAMP) test-system
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check shared services tests
	$(BIN)/ruff format --check shared services tests
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff check --fix shared services tests
	$(BIN)/ruff format shared services tests

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict shared/contract

bench: $(STAMP)
	deploy/scripts/system-packages.sh bench
	$(BIN)/python -m tests.bench

schema: $(STAMP)
	$(BIN)/python -m shared.contract.schema docs/schema

# docs/deployment.md's settings tables, from the settings classes
settings-doc: $(STAMP)
	$(BIN)/python -m shared.client.cli.settings_doc docs/deployment.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

## The container deployment for real on podman (installs podman/podman-compose if missing):
## images, compose stack + example task + a killed agent, cluster/TLS configs, testcontainers.
test-deploy: $(STAMP)
	PYTHON=$(abspath $(BIN))/python deploy/scripts/test-deploy.sh
