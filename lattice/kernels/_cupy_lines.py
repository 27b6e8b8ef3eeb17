"""CuPy path of :mod:`lattice.kernels.lines` (N = 3): one CUDA thread per (row of the leading
axes, start site) runs every path's chain (L1) in registers and writes the sum once; the
adjoint (L2) recomputes the factors and prefixes per thread and adds each factor's cotangent
at its link index with atomicAdd (real and imaginary parts separately), so its summation order
-- and the last bits of the result -- may differ between runs.

Not yet run on a GPU in this repository (no device where it was written); ``make test-gpu``
checks it against the array-API reference when a GPU is present.
"""
from __future__ import annotations

import functools

import cupy

from ._cuda_src import MAT3

MAXK = 8          # longest path the kernels hold in registers (longer paths: the reference)

_PREAMBLE = MAT3 + r"""
template <typename C>
__device__ inline void load3(const C* L, long long base, bool dag, C* f) {
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b)
      f[3 * a + b] = dag ? conj(L[base + 3 * b + a]) : L[base + 3 * a + b];
}
__device__ inline void atomic_add_c(complex<double>* z, const complex<double>& v) {
  double* d = reinterpret_cast<double*>(z);
  atomicAdd(d, v.real());
  atomicAdd(d + 1, v.imag());
}
__device__ inline void atomic_add_c(complex<float>* z, const complex<float>& v) {
  float* d = reinterpret_cast<float*>(z);
  atomicAdd(d, v.real());
  atomicAdd(d + 1, v.imag());
}
"""

_FORWARD = r"""
const long long r = i / n, q = i % n;
T acc[9], w[9], f[9], t[9];
for (int a = 0; a < 9; ++a) acc[a] = T(0);
for (int p = 0; p < P; ++p) {
  load3(&L[0], (r * E + edge[((long long)p * K) * n + q]) * 9, dag[p * K], w);
  for (int k = 1; k < K; ++k) {
    load3(&L[0], (r * E + edge[((long long)p * K + k) * n + q]) * 9, dag[p * K + k], f);
    mm3(w, f, t);
    for (int a = 0; a < 9; ++a) w[a] = t[a];
  }
  for (int a = 0; a < 9; ++a) acc[a] += w[a];
}
for (int a = 0; a < 9; ++a) W[i * 9 + a] = acc[a];
"""

_ADJOINT = r"""
const long long r = i / n, q = i % n;
T F[MAXK][9], pre[MAXK][9], g[9], t[9], fb[9], g0[9];
for (int a = 0; a < 9; ++a) g0[a] = Wb[i * 9 + a];
for (int p = 0; p < P; ++p) {
  for (int k = 0; k < K; ++k)
    load3(&L[0], (r * E + edge[((long long)p * K + k) * n + q]) * 9, dag[p * K + k], F[k]);
  for (int a = 0; a < 9; ++a) pre[0][a] = F[0][a];
  for (int k = 1; k < K - 1; ++k) mm3(pre[k - 1], F[k], pre[k]);
  for (int a = 0; a < 9; ++a) g[a] = g0[a];
  for (int k = K - 1; k >= 0; --k) {
    if (k == 0) {
      for (int a = 0; a < 9; ++a) fb[a] = g[a];
    } else {
      dm3(pre[k - 1], g, fb);                          // F_k_bar = Pre_{k-1}^dag G_k
      md3(g, F[k], t);                                 // G_{k-1} = G_k F_k^dag
      for (int a = 0; a < 9; ++a) g[a] = t[a];
    }
    const long long base = (r * E + edge[((long long)p * K + k) * n + q]) * 9;
    const bool d = dag[p * K + k];
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) {
        if (d) atomic_add_c(&Lb[base + 3 * b + a], conj(fb[3 * a + b]));
        else atomic_add_c(&Lb[base + 3 * a + b], fb[3 * a + b]);
      }
  }
}
"""


@functools.lru_cache(maxsize=None)
def _kernels():
    fwd = cupy.ElementwiseKernel("raw T L, raw int64 edge, raw bool dag, int64 E, int64 n, int32 P, int32 K",
                                 "raw T W", _FORWARD, "gaugeflow_line_sums", preamble=_PREAMBLE)
    adj = cupy.ElementwiseKernel("raw T L, raw int64 edge, raw bool dag, raw T Wb, int64 E, int64 n, int32 P, "
                                 "int32 K", "raw T Lb", _ADJOINT, "gaugeflow_line_sums_vjp",
                                 preamble=_PREAMBLE + f"\n#define MAXK {MAXK}\n")
    return fwd, adj


def _rows(L, table, nl):
    P, K = table.dag.shape
    if L.shape[-1] != 3 or L.dtype.kind != "c" or K > MAXK:
        return None
    lead = tuple(L.shape[:nl])
    R = 1
    for s in lead:
        R *= int(s)
    edge = table.on(cupy)
    dag = cupy.asarray(table.dag)
    return cupy.ascontiguousarray(L).reshape(R, table.Nd * table.V, 3, 3), lead, edge, dag, P, K


def line_sums(L, table, nl):
    got = _rows(L, table, nl)
    if got is None:
        return None
    Lf, lead, edge, dag, P, K = got
    R, n = Lf.shape[0], table.n
    W = cupy.empty((R, n, 3, 3), dtype=L.dtype)
    if R * n:
        _kernels()[0](Lf, edge, dag, Lf.shape[1], n, P, K, W, size=R * n)
    return W.reshape(lead + (n, 3, 3))


def line_sums_vjp(L, table, W_bar, nl, L_bar=None):
    got = _rows(L, table, nl)
    if got is None or (L_bar is not None and not L_bar.flags.c_contiguous):
        return None
    Lf, lead, edge, dag, P, K = got
    R, n = Lf.shape[0], table.n
    Wb = cupy.ascontiguousarray(W_bar.astype(L.dtype, copy=False)).reshape(R, n, 3, 3)
    Lb = cupy.zeros(Lf.shape, dtype=L.dtype) if L_bar is None else L_bar.reshape(Lf.shape)
    if R * n:
        _kernels()[1](Lf, edge, dag, Wb, Lf.shape[1], n, P, K, Lb, size=R * n)
    return Lb.reshape(L.shape)
