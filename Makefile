# Two commands do all the set-up on a fresh machine:
#   make quickstart   # venv + CPU torch + the package, then caption the bundled samples
#   make test         # the same set-up plus test tools, then the whole test suite
# GPU machines: see README ("Install") for the CUDA torch and flash-attn path.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# Test processes: each runs its own local Ray; 2 halves the suite's time on a 2-core machine.
TEST_WORKERS ?= 2

.PHONY: quickstart test lint install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/python -m pipeline run jobs/quickstart.yaml

test: install
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff format --check pipeline tests benchmarks
	@# The type check (about a minute on one core, cold) runs beside the tests, not before them
	@# with the other core idle; its report follows theirs, and either failure fails the target.
	$(BIN)/mypy pipeline benchmarks > $(VENV)/mypy.log 2>&1 & typecheck=$$!; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15; tests=$$?; \
	wait $$typecheck; typed=$$?; cat $(VENV)/mypy.log; \
	[ $$tests -eq 0 ] && [ $$typed -eq 0 ]

lint: install
	$(BIN)/ruff check --fix pipeline tests benchmarks
	$(BIN)/ruff format pipeline tests benchmarks
