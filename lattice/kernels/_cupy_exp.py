"""CuPy paths of :func:`lattice.kernels.expm` (SU(3)) and of the derivative map
:func:`lattice.kernels.phi_ad` / :func:`lattice.kernels.phi_ad_vjp`: one thread per matrix,
everything in registers / thread-local arrays.

* ``expm3``: (X1)-(X4) of :mod:`lattice.kernels.expm3`, per matrix (its own scaling s), in the
  precision of the input (complex64 or complex128), as the Numba path.
* ``phi_ad``: the Horner series (D2) of :mod:`lattice.kernels.dexp` for n x n real matrices,
  n <= 8 (SU(3): n = 8).
* ``phi_ad_vjp``: the adjoint (D3) without stored intermediates. For a polynomial p with real
  coefficients the adjoint of its derivative is the derivative at the transpose,
  <G, L_p(A)[E]> = <L_p(A^T)[G], E>, and the derivative is the upper-right block of p on the
  block-triangular matrix [[A^T, G], [0, A^T]]. Horner on that matrix carries two n x n blocks:

      P_{k+1} = 1, Q_{k+1} = 0;  P_k = 1 - A^T P_{k+1}/(k+1),  Q_k = -(A^T Q_{k+1} + G P_{k+1})/(k+1),

  and Abar = Q_1 -- the same polynomial (same K) as the forward, three n x n products per term.

NOT YET RUN ON A GPU: checked on the CPU by tests/test_cuda_emulated.py (the CUDA source
compiled as C++); ``make test-gpu`` compares them with the references on a device.
"""
from __future__ import annotations

import functools

import cupy  # this module is imported only for CuPy arrays

NMAX = 8

_EXPM3_BODY = r"""
typedef typename T::value_type R;
const long long b = i * 9;
T Y[9], Y2[9], E[9];
double nrm2 = 0.0;
for (int k = 0; k < 9; ++k) {
  const T v = X[b + k];
  nrm2 += (double)v.real() * (double)v.real() + (double)v.imag() * (double)v.imag();
}
const double nrm = sqrt(nrm2);
int s = 0;
if (nrm > 1.0) s = (int)ceil(log2(nrm));                                   // (X1)
const R scale = (R)ldexp(1.0, -s);
for (int k = 0; k < 9; ++k) Y[k] = X[b + k] * scale;
for (int r = 0; r < 3; ++r)
  for (int c = 0; c < 3; ++c)
    Y2[3 * r + c] = Y[3 * r] * Y[c] + Y[3 * r + 1] * Y[3 + c] + Y[3 * r + 2] * Y[6 + c];
const T t1 = Y[0] + Y[4] + Y[8];                                            // (X2)
const T t2 = Y2[0] + Y2[4] + Y2[8];
T t3 = T(0);
for (int r = 0; r < 3; ++r)
  for (int c = 0; c < 3; ++c) t3 += Y2[3 * r + c] * Y[3 * c + r];
const T e1 = t1;
const T e2 = (e1 * t1 - t2) / (R)2;
const T e3 = (e2 * t1 - e1 * t2 + t3) / (R)3;
T a0 = T(1), a1 = T(0), a2 = T(0);                                          // (X3)
T c0 = a0, c1 = a1, c2 = a2;
double fact = 1.0;
for (int n = 1; n <= terms; ++n) {
  const T top = a2;
  const T b0 = top * e3, b1 = a0 - top * e2, b2 = a1 + top * e1;
  a0 = b0; a1 = b1; a2 = b2;
  fact /= n;
  c0 += (R)fact * a0; c1 += (R)fact * a1; c2 += (R)fact * a2;
}
for (int k = 0; k < 9; ++k) E[k] = c1 * Y[k] + c2 * Y2[k];
E[0] += c0; E[4] += c0; E[8] += c0;
for (int q = 0; q < s; ++q) {                                               // (X4)
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      Y[3 * r + c] = E[3 * r] * E[c] + E[3 * r + 1] * E[3 + c] + E[3 * r + 2] * E[6 + c];
  for (int k = 0; k < 9; ++k) E[k] = Y[k];
}
for (int k = 0; k < 9; ++k) O[b + k] = E[k];
"""

_PHI_BODY = r"""
const long long b = i * n * n;
double a[64], P[64], Q[64];
for (int k = 0; k < n * n; ++k) a[k] = A[b + k];
for (int r = 0; r < n; ++r)
  for (int c = 0; c < n; ++c) P[r * n + c] = r == c ? 1.0 : 0.0;
for (int k = K; k >= 1; --k) {                                              // (D2)
  const double den = k + 1.0;
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < n; ++c) {
      double s = 0.0;
      for (int t = 0; t < n; ++t) s += a[r * n + t] * P[t * n + c];
      Q[r * n + c] = (r == c ? 1.0 : 0.0) - s / den;
    }
  for (int j = 0; j < n * n; ++j) P[j] = Q[j];
}
for (int k = 0; k < n * n; ++k) O[b + k] = P[k];
"""

_PHI_VJP_BODY = r"""
const long long b = i * n * n;
double x[64], g[64], P[64], Q[64], P2[64], Q2[64];
for (int r = 0; r < n; ++r)
  for (int c = 0; c < n; ++c) {
    x[r * n + c] = A[b + c * n + r];                                        // A^T
    g[r * n + c] = G[b + r * n + c];
    P[r * n + c] = r == c ? 1.0 : 0.0;
    Q[r * n + c] = 0.0;
  }
for (int k = K; k >= 1; --k) {              // Horner on [[A^T, G], [0, A^T]]: blocks P (diagonal), Q
  const double den = k + 1.0;
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < n; ++c) {
      double sp = 0.0, sq = 0.0;
      for (int t = 0; t < n; ++t) {
        sp += x[r * n + t] * P[t * n + c];
        sq += x[r * n + t] * Q[t * n + c] + g[r * n + t] * P[t * n + c];
      }
      P2[r * n + c] = (r == c ? 1.0 : 0.0) - sp / den;
      Q2[r * n + c] = -sq / den;
    }
  for (int j = 0; j < n * n; ++j) { P[j] = P2[j]; Q[j] = Q2[j]; }
}
for (int k = 0; k < n * n; ++k) O[b + k] = Q[k];
"""


@functools.lru_cache(maxsize=None)
def _expm3_kernel():
    return cupy.ElementwiseKernel("raw T X, int32 terms", "raw T O", _EXPM3_BODY, "gaugeflow_expm3")


@functools.lru_cache(maxsize=None)
def _phi_kernel():
    return cupy.ElementwiseKernel("raw float64 A, int32 n, int32 K", "raw float64 O", _PHI_BODY, "gaugeflow_phi_ad")


@functools.lru_cache(maxsize=None)
def _phi_vjp_kernel():
    return cupy.ElementwiseKernel("raw float64 A, raw float64 G, int32 n, int32 K", "raw float64 O", _PHI_VJP_BODY,
                                  "gaugeflow_phi_ad_vjp")


def expm3(X, terms: int):
    """exp of a (..., 3, 3) complex stack; None where this path does not apply."""
    if X.dtype.kind != "c":
        return None
    from .expm3 import check_entries
    x = cupy.ascontiguousarray(X).reshape(-1, 3, 3)
    check_entries(x, cupy)
    E = cupy.empty(x.shape, dtype=x.dtype)
    if x.shape[0]:
        _expm3_kernel()(x.reshape(-1), int(terms), E.reshape(-1), size=x.shape[0])
    return E.reshape(X.shape)


def phi_ad(A, K: int):
    """phi(A) of (D2), float64 (..., n, n), n <= NMAX; None otherwise."""
    n = A.shape[-1]
    if n > NMAX or A.dtype != cupy.float64:
        return None
    a = cupy.ascontiguousarray(A).reshape(-1)
    out = cupy.empty(A.shape, dtype=cupy.float64)
    m = a.size // (n * n) if n else 0
    if m:
        _phi_kernel()(a, int(n), int(K), out.reshape(-1), size=m)
    return out


def phi_ad_vjp(A, K: int, phi_bar):
    """Abar of (D3) by the block-triangular Horner (module docstring); None where n > NMAX."""
    n = A.shape[-1]
    if n > NMAX or A.dtype != cupy.float64 or phi_bar.dtype != cupy.float64:
        return None
    a = cupy.ascontiguousarray(A).reshape(-1)
    g = cupy.ascontiguousarray(cupy.broadcast_to(phi_bar, A.shape)).reshape(-1)
    out = cupy.empty(A.shape, dtype=cupy.float64)
    m = a.size // (n * n) if n else 0
    if m:
        _phi_vjp_kernel()(a, g, int(n), int(K), out.reshape(-1), size=m)
    return out
