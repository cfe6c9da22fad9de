# The two commands of the README: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-readme lint format venv clean tools

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

# Every command block of the README on a fresh copy of the repository (tests/test_readme.py);
# minutes of work, so outside `make test`'s 20-minute budget; CI runs it after `make test`.
test-readme: $(STAMP)
	$(BIN)/python -m pytest -m readme tests/test_readme.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# System tools some tests use, from Debian's packages: shellcheck lints the generated Slurm
# scripts, headless Chromium renders the demo report, and MUNGE + slurmctld + slurmd +
# slurm-client run a one-node Slurm on loopback (tests/cluster/slurm_cluster.py) for the real
# submission tests; the tests write their own slurm.conf and MUNGE key and use none of the
# packages' services. Installing needs apt-get as root and a network; elsewhere this only
# warns, and those tests skip saying why. The daemons live in /usr/sbin, hence the PATH.
TOOLS_PACKAGES := shellcheck chromium munge slurmctld slurmd slurm-client
TOOLS_PROGRAMS := shellcheck chromium munged slurmctld slurmd sbatch
tools:
	@export PATH="$$PATH:/usr/sbin:/sbin"; missing=; \
	for program in $(TOOLS_PROGRAMS); do command -v $$program >/dev/null 2>&1 || missing=1; done; \
	test -z "$$missing" || \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  $(TOOLS_PACKAGES); } >/dev/null 2>&1 || \
	echo "make tools: could not install $(TOOLS_PACKAGES) (needs root and network); their tests will be skipped"

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
