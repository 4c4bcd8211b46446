# Two commands matter: `make run` (the whole product, embedded services when no URLs are set)
# and `make test` (the whole suite). Both build their own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test bench install lint schema lock clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	@touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/newfriends dev

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every benchmark under bench/, one after another, into bench/report.md and bench/report.json;
# fails when a target is missed.
bench: $(VENV)/.installed-test
	$(BIN)/python bench/report.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy domain resolvers schema infra workers tests

# Regenerates the exported SDL after a schema change (a test fails while it is stale).
schema: $(VENV)/.installed-run
	$(BIN)/python -c 'import schema; open("schema.graphql", "w").write(schema.sdl())'

# Re-locks every dependency to the newest versions pyproject.toml allows.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e '.[test]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
