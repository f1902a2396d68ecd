# The README's two commands: `make demo` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip

.PHONY: demo test lint bench-routing bench-allocation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Re-install when the project's metadata changes (stamp files).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e ".[test]"
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/coldchain demo

test: $(VENV)/.installed-test
	$(BIN)/pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e ".[test,bench]"
	@touch $@

bench-routing: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.routing

bench-allocation: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.allocation

clean:
	rm -rf $(VENV) demo-output var .pytest_cache
