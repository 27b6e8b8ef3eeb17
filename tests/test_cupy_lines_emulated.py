"""The CUDA source of lattice/kernels/_cupy_lines.py, run on the CPU: its preamble and kernel
bodies are compiled with the host C++ compiler against std::complex (atomicAdd as a plain
add, the element-wise loop as a for loop over i) and must give the array-API reference's line
sums and adjoint. This checks the indexing and the algebra of the device code where no GPU
exists; it does not check CuPy's kernel launch, NVRTC or the atomics (``make test-gpu`` does).
Skipped without a C++ compiler."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lattice import kernels
from flows.residual import family_paths

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")

_HARNESS = r'''
#include <complex>
#include <fstream>
#include <vector>
#include <cstdlib>
using std::complex; using std::conj;
#define __device__
inline void atomicAdd(double* d, double v) { *d += v; }
inline void atomicAdd(float* d, float v) { *d += v; }
@PREAMBLE@
typedef complex<double> T;
#define MAXK @MAXK@
template <typename X> std::vector<X> rd(const char* f, size_t n) {
  std::vector<X> v(n); std::ifstream s(f, std::ios::binary); s.read((char*)v.data(), n * sizeof(X)); return v; }
int main(int argc, char** argv) {
  long long R = atoll(argv[1]), E = atoll(argv[2]), n = atoll(argv[3]); int P = atoi(argv[4]), K = atoi(argv[5]);
  auto Lv = rd<T>("L.bin", R * E * 9); auto ev = rd<long long>("edge.bin", (size_t)P * K * n);
  auto dv = rd<char>("dag.bin", (size_t)P * K); auto wbv = rd<T>("wb.bin", R * n * 9);
  const T* L = Lv.data(); const long long* edge = ev.data(); const T* Wb = wbv.data();
  std::vector<char> dagv(dv); bool* dag = new bool[P * K];
  for (int j = 0; j < P * K; ++j) dag[j] = dagv[j];
  std::vector<T> Wv(R * n * 9), Lbv(R * E * 9, T(0)); T* W = Wv.data(); T* Lb = Lbv.data();
  for (long long i = 0; i < R * n; ++i) {
@FORWARD@
  }
  for (long long i = 0; i < R * n; ++i) {
@ADJOINT@
  }
  std::ofstream("W.bin", std::ios::binary).write((char*)W, Wv.size() * sizeof(T));
  std::ofstream("Lb.bin", std::ios::binary).write((char*)Lb, Lbv.size() * sizeof(T));
  delete[] dag;
  return 0;
}
'''


def _source(name, text):
    m = re.search(name + r' = r"""(.*?)"""', text, re.S)
    assert m, f"{name} not found in _cupy_lines.py"
    return m.group(1)


@pytest.mark.skipif(CXX is None, reason="no C++ compiler on this machine")
def test_cuda_line_sums_source_on_the_cpu(tmp_path):
    text = (ROOT / "lattice" / "kernels" / "_cupy_lines.py").read_text()
    maxk = re.search(r"^MAXK = (\d+)", text, re.M).group(1)
    src = (_HARNESS.replace("@PREAMBLE@", _source("_PREAMBLE", text)).replace("@MAXK@", maxk)
           .replace("@FORWARD@", _source("_FORWARD", text)).replace("@ADJOINT@", _source("_ADJOINT", text)))
    (tmp_path / "emu.cpp").write_text(src)
    r = subprocess.run([CXX, "-O1", "-o", "emu", "emu.cpp"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rng = np.random.default_rng(0)
    shape, V = (4, 3, 4, 6), 288
    for family, lead, n in (("rectangle", (2, 2), 96), ("plaquette", (3,), 288), ("chair", (1,), 17)):
        tb = kernels.line_table(shape, [p for p, _ in family_paths(family, 2, 4)], rng.choice(V, n, replace=False),
                                shift=(2, 1))
        L = rng.normal(size=lead + (4,) + shape + (3, 3)) + 1j * rng.normal(size=lead + (4,) + shape + (3, 3))
        Wb = rng.normal(size=lead + (n, 3, 3)) + 1j * rng.normal(size=lead + (n, 3, 3))
        L.tofile(tmp_path / "L.bin")
        tb.edge.astype(np.int64).tofile(tmp_path / "edge.bin")
        tb.dag.astype(np.int8).tofile(tmp_path / "dag.bin")
        Wb.tofile(tmp_path / "wb.bin")
        P, K = tb.dag.shape
        R = int(np.prod(lead))
        subprocess.run([str(tmp_path / "emu"), str(R), str(4 * V), str(n), str(P), str(K)], cwd=tmp_path, check=True)
        W = np.fromfile(tmp_path / "W.bin", complex).reshape(lead + (n, 3, 3))
        Lb = np.fromfile(tmp_path / "Lb.bin", complex).reshape(L.shape)
        with kernels.reference_only():
            W_ref, Lb_ref = kernels.line_sums(L, tb), kernels.line_sums_vjp(L, tb, Wb)
        assert np.max(np.abs(W - W_ref)) < 1e-12 * np.max(np.abs(W_ref)), family
        assert np.max(np.abs(Lb - Lb_ref)) < 1e-12 * np.max(np.abs(Lb_ref)), family
