# The two commands of the README: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format venv clean tools

venv: $(STAMP)

# torch==2.13.0 goes in first: it is on this machine's disk as a CPU build, and any
# looser torch requirement resolved later would pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cloud demo --out runs/demo

test: $(STAMP) lint
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# System tools some tests use, from Debian's packages: shellcheck lints the generated Slurm
# scripts, headless Chromium renders the demo report. Installing needs apt-get as root and a
# network; elsewhere this only warns, and those tests skip saying why.
tools:
	@command -v shellcheck >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 || \
	{ apt-get update -qq && apt-get install -y -qq shellcheck chromium; } >/dev/null 2>&1 || \
	echo "make tools: could not install shellcheck/chromium (needs root and network); their tests will be skipped"

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
