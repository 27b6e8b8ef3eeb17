#!/bin/sh
# `make test-gpu` and `make bench-gpu` in one go, on a GPU machine that has no network: no
# virtual environment, no install. It runs with a Python that already has the dependencies
# (numpy, scipy, h5py, numba, threadpoolctl, pytest, hypothesis and a CuPy for the machine's
# CUDA, e.g. cupy-cuda13x; matplotlib and tqdm are optional); pure-Python packages it lacks
# (array-api-compat, usually; threadpoolctl, tqdm) come as wheels in .whl/ (`make gpu-wheels`
# downloads them where pip works), installed into a scratch folder on the path. Before the
# tests it compiles one CUDA kernel and runs a batched eigh, so that a CuPy without its CUDA
# libraries (NVRTC, cuSOLVER) stops the run at once (exit 2) instead of failing every test.
#
#   sh bench/gpu_check.sh [OUTDIR]        (default out/gpu)
#
# Environment: PYTHON (python3), GAUGEFLOW_HBM_TBS (nominal HBM bandwidth in TB/s: H100 SXM
# 3.35, H200 4.8), GAUGEFLOW_GPU_BENCH_ARGS (extra `bench.run` arguments, e.g. --quick).
# Writes OUTDIR/environment.txt, test-gpu.log (pytest -rA: every test's outcome),
# bench-gpu.log and results-gpu.json. Exit status: that of the tests, else of the benchmarks.
set -u
PY=${PYTHON:-python3}
OUTDIR=${1:-out/gpu}
mkdir -p "$OUTDIR" || exit 2
if ls .whl/*.whl >/dev/null 2>&1; then
    SITE=$(mktemp -d "${TMPDIR:-/tmp}/gaugeflow-site.XXXXXX") || exit 2
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || {
        echo "gpu_check: installing the wheels in .whl/ failed (see above)" >&2; exit 2; }
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} \
       MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}

# what the run stands on, and a clear stop where a dependency is missing
"$PY" - >"$OUTDIR/environment.txt" 2>&1 <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], sys.executable, platform.machine())
missing = []
for name in ("numpy", "scipy", "h5py", "numba", "threadpoolctl", "array_api_compat", "pytest", "hypothesis",
             "cupy", "matplotlib", "tqdm"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        print(name, "MISSING:", type(exc).__name__, exc)
        if name not in ("matplotlib", "tqdm"):      # plots and progress bars only: not needed here
            missing.append(name)
try:
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    for i in range(n):
        p = cupy.cuda.runtime.getDeviceProperties(i)
        print(f"device {i}: {p['name'].decode()}, {p['totalGlobalMem'] / 2**30:.1f} GiB, "
              f"compute capability {p['major']}.{p['minor']}")
    print("CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(), "driver", cupy.cuda.runtime.driverGetVersion())
    if n:   # NVRTC and cuSOLVER are found (a CuPy without its CUDA libraries still lists the device)
        k = cupy.ElementwiseKernel("raw complex128 X", "raw complex128 Y", "Y[i] = conj(X[i]) * 2.0;",
                                   "gaugeflow_smoke")
        y = cupy.empty(4, dtype=cupy.complex128)
        k(cupy.full(4, 1 + 1j), y, size=4)
        assert complex(cupy.asnumpy(y)[0]) == 2 - 2j, y
        w = cupy.asnumpy(cupy.linalg.eigh(cupy.eye(3)[None].repeat(2, axis=0))[0])
        assert float(abs(w - 1).max()) < 1e-12, w
        print("CUDA smoke test: a compiled kernel and a batched eigh ran")
except Exception as exc:
    print("no usable GPU:", type(exc).__name__, exc)
    missing.append(f"a working CuPy ({type(exc).__name__}: {exc})")
if missing:
    sys.exit("missing: " + ", ".join(missing) + " (pure-Python packages: `make gpu-wheels` puts them in .whl/)")
EOF
rc=$?
cat "$OUTDIR/environment.txt"
[ $rc -eq 0 ] || exit 2

GAUGEFLOW_REQUIRE_GPU=1 "$PY" -m pytest -q -rA -p no:cacheprovider tests/test_gpu.py >"$OUTDIR/test-gpu.log" 2>&1
test_rc=$?
tail -n 40 "$OUTDIR/test-gpu.log"
# shellcheck disable=SC2086
"$PY" -m bench.run ${GAUGEFLOW_GPU_BENCH_ARGS:-} --out "$OUTDIR/results-gpu.json" gpu >"$OUTDIR/bench-gpu.log" 2>&1
bench_rc=$?
cat "$OUTDIR/bench-gpu.log"
[ $test_rc -ne 0 ] && exit $test_rc
exit $bench_rc
