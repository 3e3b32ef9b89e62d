# `make run`: set up (when needed) and run the main job. `make test`: set up and run the tests.
PYTHON ?= $(shell for p in python3.12 python3.13 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench setup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,pipelines]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/daskgmm demo-data --out demo-data
	$(BIN)/daskgmm run configs/demo.yaml

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# `make bench`: Java (Debian's, when missing) and the `bench` extra (pyspark, matplotlib) for
# the Spark MLlib column; without them that column says "skipped: <why>" and the rest runs.
bench: $(VENV)/.installed
	-bash benchmarks/install-java.sh
	@$(BIN)/python -c 'import pyspark, matplotlib' 2>/dev/null || \
		$(BIN)/python -m pip install --quiet -e '.[bench]' || \
		echo "make bench: the bench extra did not install; Spark MLlib will be skipped" >&2
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/missing.py

# `make slurm-test` (as root): start the single-node test SLURM of deploy/slurm/ (installing
# Debian's slurm-wlm and munge when missing), then run the SLURM tests against it. SLURM
# stays up afterwards; deploy/slurm/stop-test-slurm.sh stops it.
.PHONY: slurm-test
slurm-test: $(VENV)/.installed
	deploy/slurm/start-test-slurm.sh
	$(BIN)/python -m pytest tests/test_slurm.py
