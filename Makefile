# Two commands for a fresh machine (see README.md):
#   make run    set up .venv, build seqrec, train + evaluate SASRec on the synthetic dataset
#   make test   set up .venv, build seqrec, run the test suite
# Every target is idempotent: rerunning only rebuilds what changed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch this project is pinned to (a CUDA build works too: set TORCH_SPEC).
TORCH_SPEC ?= torch==2.13.0
BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.12" "numpy>=1.24" "tqdm>=4.60"
TEST_DEPS  := "pytest>=8" "pandas>=2.0" "nbclient>=0.10" "nbformat>=5.9" "ipykernel>=6" "matplotlib>=3.7"

.PHONY: setup build run test bench clean

$(VENV)/.deps-stamp: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC) $(BUILD_DEPS) $(TEST_DEPS)
	touch $@

setup: $(VENV)/.deps-stamp

# --no-build-isolation: compile against the torch installed above, never a fresh one.
build: setup
	$(PIP) install -q --no-build-isolation --no-deps -e .

run: build
	$(VENV)/bin/seqrec train --model sasrec --data synthetic --epochs 40 --patience 5

test: build
	$(PY) -m pytest -q

# Every benchmark with its defaults (long: minutes each on 2 CPU cores).
bench: build
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build $(VENV)
