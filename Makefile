# Two commands for a fresh machine (see README.md):
#   make run        set up .venv, build seqrec, train + evaluate SASRec on the synthetic dataset
#                   (its run folder: runs/quickstart/, replaced by each `make run`)
#   make test       set up .venv, build seqrec, run the test suite
#   make test-fast  the unit tests only: no notebooks, nothing marked slow / compile / shared_data
# Every target is idempotent: rerunning only rebuilds what changed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch this project is pinned to (a CUDA build works too: set TORCH_SPEC).
TORCH_SPEC ?= torch==2.13.0
BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.12" "numpy>=1.24" "tqdm>=4.60"
TEST_DEPS  := "pytest>=8" "pandas>=2.0" "nbclient>=0.10" "nbformat>=5.9" "ipykernel>=6" "ipywidgets>=8" "matplotlib>=3.7"

.PHONY: setup build run test test-fast bench clean

$(VENV)/.deps-stamp: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC) $(BUILD_DEPS) $(TEST_DEPS)
	touch $@

setup: $(VENV)/.deps-stamp

# --no-build-isolation: compile against the torch installed above, never a fresh one.
# One build folder per Python ABI and torch version: another environment building from
# this clone (another TORCH_SPEC, another venv) gets its own instead of reconfiguring this one.
build: setup
	$(PIP) install -q --no-build-isolation --no-deps \
	  --config-settings=build-dir="build/{wheel_tag}-torch$$($(PY) -c 'import torch; print(torch.__version__)')" -e .

# --overwrite: each `make run` replaces the previous quick-start run.
run: build
	$(VENV)/bin/seqrec train --model sasrec --data synthetic --epochs 40 --patience 5 --out runs/quickstart --overwrite

test: build
	$(PY) -m pytest -q

test-fast: build
	$(PY) -m pytest -q -m "not slow and not compile and not shared_data" --ignore=tests/test_notebooks.py

# Every benchmark with its defaults (long: minutes each on 2 CPU cores).
bench: build
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build $(VENV)
