"""Run the CuPy paths of lattice/kernels on the CPU: a stand-in ``cupy`` module whose array
functions are NumPy's and whose ``ElementwiseKernel`` compiles the kernel's CUDA source (its
preamble and body, raw and scalar parameters) with the host C++ compiler against
std::complex, as a loop over the element index i, and calls it through ctypes.

What this checks: the wrapper code of ``_cupy*.py`` (shapes, dtypes, strides, argument order)
and the indexing and algebra of the CUDA source; and, since every launch runs twice, with the
element loop forwards and backwards, that no thread reads or writes what another writes (a data
race shows as an order-dependent result, which raises). What it does not: NVRTC, CuPy's launch and
type handling, thrust's complex type, atomics, memory coalescing (``make test-gpu`` on a GPU
does). Used by tests/test_cuda_emulated.py; needs a C++ compiler (g++, c++ or clang++).
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")

_HEAD = r"""
#include <complex>
#include <cmath>
#include <algorithm>
using std::complex; using std::conj; using std::sqrt; using std::abs; using std::exp;
using std::atan2; using std::cos; using std::sin; using std::acos; using std::fabs; using std::fmax; using std::fmin;
using std::isfinite; using std::isnan; using std::hypot; using std::min; using std::max;
#define __device__
#define __forceinline__ inline
inline void atomicAdd(double* d, double v) { *d += v; }
inline void atomicAdd(float* d, float v) { *d += v; }
"""

_CTYPES = {"int64": ("long long", ctypes.c_longlong), "int32": ("int", ctypes.c_int),
           "bool": ("bool", ctypes.c_bool), "float64": ("double", ctypes.c_double),
           "float32": ("float", ctypes.c_float)}
_CPP_OF_DTYPE = {np.dtype(np.complex128): "complex<double>", np.dtype(np.complex64): "complex<float>",
                 np.dtype(np.float64): "double", np.dtype(np.float32): "float", np.dtype(np.bool_): "bool",
                 np.dtype(np.int64): "long long", np.dtype(np.int32): "int"}
_CACHE: dict = {}
_BUILD = Path(tempfile.mkdtemp(prefix="gaugeflow-cuda-emulation-"))


def _params(spec: str):
    out = []
    for tok in spec.split(","):
        words = tok.split()
        raw = words[0] == "raw"
        out.append((raw, words[-2], words[-1]))         # (raw, type, name)
    return out


class ElementwiseKernel:
    """Stand-in for ``cupy.ElementwiseKernel`` with raw array and scalar parameters only."""

    def __init__(self, in_params, out_params, operation, name="kernel", preamble="", **_):
        self.params = _params(in_params) + _params(out_params)
        if any(not raw and typ == "T" for raw, typ, _ in self.params):
            raise NotImplementedError("the emulator handles raw arrays and scalars only")
        self.body, self.name, self.preamble = operation, name, preamble

    def _library(self, T: str):
        sig = []
        for raw, typ, name in self.params:
            ctype = T if typ == "T" else _CTYPES.get(typ, (None,))[0] or {"complex128": "complex<double>",
                                                                        "complex64": "complex<float>"}[typ]
            sig.append(f"{ctype}* {name}" if raw else f"{ctype} {name}")
        src = (_HEAD + self.preamble + f'\nextern "C" void run(long long _n, bool _reverse, {", ".join(sig)}) {{\n'
               f"  typedef {T} T;\n  for (long long _k = 0; _k < _n; ++_k) {{\n"
               f"  const long long i = _reverse ? _n - 1 - _k : _k;\n{self.body}\n  }}\n}}\n")
        key = hashlib.sha1(src.encode()).hexdigest()[:16]
        if key not in _CACHE:
            cpp, lib = _BUILD / f"{self.name}_{key}.cpp", _BUILD / f"{self.name}_{key}.so"
            cpp.write_text(src)
            r = subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-o", str(lib), str(cpp)], capture_output=True,
                               text=True)
            if r.returncode:
                raise RuntimeError(f"emulated kernel {self.name} does not compile:\n{r.stderr[-4000:]}")
            _CACHE[key] = ctypes.CDLL(str(lib))
        return _CACHE[key]

    def __call__(self, *args, size):
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.params)} parameters")
        T = None
        for (raw, typ, _), a in zip(self.params, args):
            if typ == "T":
                T = _CPP_OF_DTYPE[np.asarray(a).dtype]
                break
        fn = self._library(T or "double").run
        cargs, raws = [], []
        for (raw, typ, name), a in zip(self.params, args):
            if raw:
                if not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
                    raise TypeError(f"{self.name}: raw argument {name} must be a C-contiguous array")
                raws.append((name, a))
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                cargs.append(_CTYPES[typ][1](a))
        before = [a.copy() for _, a in raws]
        fn(ctypes.c_longlong(int(size)), ctypes.c_bool(True), *cargs)
        reversed_order = [a.copy() for _, a in raws]
        for (_, a), b in zip(raws, before):
            if a.flags.writeable:                       # read-only inputs (broadcast views)
                a[...] = b
            elif not np.array_equal(a, b, equal_nan=True):
                raise AssertionError(f"emulated kernel {self.name} wrote into a read-only argument")
        fn(ctypes.c_longlong(int(size)), ctypes.c_bool(False), *cargs)
        self._check_order(raws, reversed_order)

    def _check_order(self, raws, reversed_order):
        """Threads of a kernel run in no fixed order: the same launch with the element loop
        reversed (every pair of threads in the opposite order) must write the same arrays,
        bit for bit, unless the source adds with atomicAdd (then to rounding: the atomic sums'
        order is free by design). A difference is a data race between threads."""
        atomic = "atomicAdd" in self.preamble + self.body or "atomic_add" in self.body
        for (name, a), r in zip(raws, reversed_order):
            if atomic and a.dtype.kind in "fc":
                tol = 64 * np.finfo(a.dtype).eps * max(1.0, float(np.max(np.abs(a), initial=0.0)))
                same = bool(np.all(np.abs(a - r) <= tol))
            else:
                same = np.array_equal(a, r, equal_nan=a.dtype.kind in "fc")
            if not same:
                raise AssertionError(f"emulated kernel {self.name}: {name} depends on the order of the "
                                     "threads (a data race): the element loop run backwards wrote other values")


def fake_cupy():
    """A module named ``cupy``: NumPy's namespace plus the emulated ElementwiseKernel."""
    mod = types.ModuleType("cupy")
    mod.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    mod.ElementwiseKernel = ElementwiseKernel
    mod.linalg = np.linalg
    synchronized = types.SimpleNamespace(synchronize=lambda: None)
    mod.cuda = types.SimpleNamespace(get_current_stream=lambda: synchronized, Device=lambda *_: synchronized,
                                     runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    return mod


def load(monkeypatch, module: str):
    """Import ``lattice.kernels.<module>`` against the stand-in cupy (both undone by
    monkeypatch at the end of the test)."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    name = f"lattice.kernels.{module}"
    monkeypatch.setitem(sys.modules, name, None)    # records the entry as it was, restored at the end
    del sys.modules[name]
    return importlib.import_module(name)
