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
BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.12" "numpy>=1.24" "tqdm>=4.60" "safetensors>=0.4"
TEST_DEPS  := "pytest>=8" "pandas>=2.0" "nbclient>=0.10" "nbformat>=5.9" "ipykernel>=6" "ipywidgets>=8" "matplotlib>=3.7" \
              "hypothesis>=6" "pyarrow>=14" "tensorboard>=2.14" "onnx>=1.16" "onnxscript>=0.2" "onnxruntime>=1.18" "faiss-cpu>=1.8"

.PHONY: setup build run test test-fast bench clean sanitize

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

# The loader and op tests against a build of the C++ core with AddressSanitizer and
# UndefinedBehaviorSanitizer, in its own venv and build folder (.venv and build/ stay as
# they are). That venv reuses .venv's packages through a .pth file (no second torch);
# the .pth files of .venv itself are not run, so .venv's seqrec stays out of it.
SAN_VENV  ?= .venv-sanitize
SAN_PY    := $(SAN_VENV)/bin/python
SAN_TESTS ?= tests/test_data.py tests/test_hostile_data.py tests/test_fuzz_readers.py \
             tests/test_rank_topk.py tests/test_dif_attention.py tests/test_intent_cluster.py \
             tests/test_seq_mask.py tests/test_dropout.py
# Python itself is not instrumented: the ASan runtime of the compiler that built the
# module must be loaded first, and libstdc++ with it (python does not link it, and ASan
# finds no __cxa_throw to intercept otherwise: the first C++ exception aborts). Leaks
# are not checked (CPython keeps memory to exit on purpose); any UBSan finding aborts
# the run (see CMakeLists.txt).
SAN_ENV = LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)" \
          ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1 \
          UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

$(SAN_VENV)/.deps-stamp: $(VENV)/.deps-stamp
	test -x $(SAN_PY) || $(PYTHON) -m venv $(SAN_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(SAN_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_seqrec_base_venv.pth"
	touch $@

sanitize: $(SAN_VENV)/.deps-stamp
	$(SAN_PY) -m pip install -q --no-build-isolation --no-deps -Ccmake.define.SEQREC_SANITIZE=ON \
	  -Cbuild-dir=build-sanitize/{wheel_tag} -e .
	$(SAN_ENV) $(SAN_PY) -m pytest -q -p no:cacheprovider $(SAN_TESTS)

# Every benchmark with its defaults (long: minutes each on 2 CPU cores).
bench: build
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build $(VENV) build-sanitize $(SAN_VENV)
