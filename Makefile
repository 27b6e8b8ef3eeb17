# gaugeflow: `make demo`, `make test`, `make bench` each create .venv if missing and install
# the project into it (extras: test, mpi). Nothing is installed by hand.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
NP      ?= 2
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: demo test test-fast test-mpi test-slow test-gpu gpu-check gpu-wheels docs-check bench bench-gpu venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,mpi,analysis]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gaugeflow demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not mpi" tests
	$(MAKE) --no-print-directory test-mpi

test-mpi: $(STAMP)
	@if ls tests/mpi/test_*.py >/dev/null 2>&1; then \
	  for n in 2 4; do \
	    echo "== MPI tests on $$n ranks"; \
	    $(BIN)/mpiexec -n $$n $(BIN)/python -m pytest -q -p no:cacheprovider -m mpi tests/mpi || exit 1; \
	  done; \
	fi

# CuPy on a GPU: every kernel against its reference, flow/HMC/CG/det ratio equal to NumPy
# (needs the gpu extra: pip install -e '.[gpu]'); fails instead of skipping without a GPU
test-gpu: $(STAMP)
	GAUGEFLOW_REQUIRE_GPU=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_gpu.py

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

# the README's python examples, each in a temporary directory, against their printed output
# (docs/readme_check.py; --update rewrites the output blocks); also run by test-slow
docs-check: $(STAMP)
	$(BIN)/python docs/readme_check.py

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-gpu: $(STAMP)
	$(BIN)/python -m bench.run --out bench/results-gpu.json gpu

# test-gpu and bench-gpu on a GPU machine without network, with its own Python (no venv, no
# install; PYTHON=..., results in out/gpu): bench/gpu_check.sh. gpu-wheels, run where pip
# works, puts the pure-Python dependencies such a Python may lack into .whl/ for it.
gpu-check:
	sh bench/gpu_check.sh out/gpu

gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: -d .whl "array-api-compat>=1.9" "threadpoolctl>=3.1" "tqdm>=4.66"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
