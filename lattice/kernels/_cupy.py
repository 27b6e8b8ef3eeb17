"""CuPy fast paths of the kernel layer: one fused element-wise CUDA kernel per operation,
one thread per matrix position (colour-first layout, coalesced loads).

Not yet run on a GPU in this repository's CI (no device there); ``make test-gpu`` checks every
kernel here against its array-API reference when a GPU is present.
"""
from __future__ import annotations

import functools

import cupy  # noqa: F401  (this module is imported only for CuPy arrays)

_MUL_BODY = r"""
const long long m = i;
for (int r = 0; r < n; ++r) {
  for (int c = 0; c < n; ++c) {
    T s = T(0);
    for (int k = 0; k < n; ++k) {
      const T x = da ? conj(A[((long long)(k * n + r)) * M + m]) : A[((long long)(r * n + k)) * M + m];
      const T y = db ? conj(B[((long long)(c * n + k)) * M + m]) : B[((long long)(k * n + c)) * M + m];
      s += x * y;
    }
    C[((long long)(r * n + c)) * M + m] = s;
  }
}
"""


@functools.lru_cache(maxsize=None)
def _mul_kernel():
    return cupy.ElementwiseKernel("raw T A, raw T B, int64 M, int32 n, bool da, bool db", "raw T C",
                                  _MUL_BODY, "gaugeflow_colour_first_mul")


def mul(A, B, da: bool, db: bool, out):
    N = A.shape[0]
    rest = cupy.broadcast_shapes(A.shape[2:], B.shape[2:]) if hasattr(cupy, "broadcast_shapes") \
        else tuple(cupy.broadcast(A[0, 0], B[0, 0]).shape)
    dtype = cupy.result_type(A.dtype, B.dtype)
    A = cupy.ascontiguousarray(cupy.broadcast_to(A.astype(dtype, copy=False), (N, N) + tuple(rest)))
    B = cupy.ascontiguousarray(cupy.broadcast_to(B.astype(dtype, copy=False), (N, N) + tuple(rest)))
    M = 1
    for s in rest:
        M *= int(s)
    C = cupy.empty((N, N) + tuple(rest), dtype=dtype) if out is None else out
    if not C.flags.c_contiguous:
        tmp = cupy.empty((N, N) + tuple(rest), dtype=dtype)
        _mul_kernel()(A, B, M, N, bool(da), bool(db), tmp, size=M)
        C[...] = tmp
        return C
    _mul_kernel()(A, B, M, N, bool(da), bool(db), C, size=M)
    return C


# ------------------------------------------------------------------ Hermitian 3x3 eigensystems
_EIGH3_PREAMBLE = r"""
typedef complex<double> cd;
__device__ inline double n2(const cd& z) { return z.real() * z.real() + z.imag() * z.imag(); }
__device__ inline void null_vec(cd a00, cd a01, cd a02, cd a11, cd a12, cd a22, double lam,
                                cd& v0, cd& v1, cd& v2) {
  cd b00 = a00 - lam, b11 = a11 - lam, b22 = a22 - lam;
  cd r10 = conj(a01), r20 = conj(a02), r21 = conj(a12);
  cd c0 = a01 * a12 - a02 * b11, c1 = a02 * r10 - b00 * a12, c2 = b00 * b11 - a01 * r10;
  cd d0 = a01 * b22 - a02 * r21, d1 = a02 * r20 - b00 * b22, d2 = b00 * r21 - a01 * r20;
  cd e0 = b11 * b22 - a12 * r21, e1 = a12 * r20 - r10 * b22, e2 = r10 * r21 - b11 * r20;
  double n01 = n2(c0) + n2(c1) + n2(c2), n02 = n2(d0) + n2(d1) + n2(d2), n12 = n2(e0) + n2(e1) + n2(e2);
  if (n01 >= n02 && n01 >= n12) { double s = n01 > 0 ? 1.0 / sqrt(n01) : 0.0; v0 = c0 * s; v1 = c1 * s; v2 = c2 * s; }
  else if (n02 >= n12) { double s = n02 > 0 ? 1.0 / sqrt(n02) : 0.0; v0 = d0 * s; v1 = d1 * s; v2 = d2 * s; }
  else { double s = n12 > 0 ? 1.0 / sqrt(n12) : 0.0; v0 = e0 * s; v1 = e1 * s; v2 = e2 * s; }
}
"""

# one thread per matrix; the same algorithm as lattice/kernels/_numba_eigh.py, (E1)-(E4).
# The body sits inside CuPy's grid-stride loop: an early exit is `continue`, never `return`.
_EIGH3_BODY = r"""
const long long b = 9 * (long long)i;
cd a[9];
for (int k = 0; k < 9; ++k) a[k] = cd(A[b + k].real(), A[b + k].imag());
const double d0 = a[0].real(), d1 = a[4].real(), d2 = a[8].real();
const double q = (d0 + d1 + d2) / 3.0;
const double off = n2(a[1]) + n2(a[2]) + n2(a[5]);
const double b00 = d0 - q, b11 = d1 - q, b22 = d2 - q;
const double p2 = (b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * off) / 6.0;
bad[i] = false;
if (!(p2 > 0.0) || !isfinite(p2) || !isfinite(q)) { bad[i] = true; continue; }
const double p = sqrt(p2);
if (p <= 1e-12 * fabs(q)) { bad[i] = true; continue; }
const double detB = b00 * b11 * b22 + 2.0 * (a[1] * a[5] * conj(a[2])).real()
                    - b00 * n2(a[5]) - b11 * n2(a[2]) - b22 * n2(a[1]);
double r = detB / (2.0 * p2 * p);
r = fmin(1.0, fmax(-1.0, r));
const double phi = acos(r) / 3.0;
const double lmax = q + 2.0 * p * cos(phi);
const double lmin = q + 2.0 * p * cos(phi + 2.0943951023931953);
const double lmid = 3.0 * q - lmax - lmin;
if (fmin(lmax - lmid, lmid - lmin) <= degenerate * p) { bad[i] = true; continue; }
cd x0, x1, x2, z0, z1, z2;
null_vec(a[0], a[1], a[2], a[4], a[5], a[8], lmax, x0, x1, x2);
null_vec(a[0], a[1], a[2], a[4], a[5], a[8], lmin, z0, z1, z2);
cd ov = conj(x0) * z0 + conj(x1) * z1 + conj(x2) * z2;
z0 = z0 - ov * x0; z1 = z1 - ov * x1; z2 = z2 - ov * x2;
const double nz = sqrt(n2(z0) + n2(z1) + n2(z2));
if (!(nz > 0.0)) { bad[i] = true; continue; }
z0 = z0 / nz; z1 = z1 / nz; z2 = z2 / nz;
cd y0 = conj(x1 * z2 - x2 * z1), y1 = conj(x2 * z0 - x0 * z2), y2 = conj(x0 * z1 - x1 * z0);
cd cols[3][3] = {{z0, z1, z2}, {y0, y1, y2}, {x0, x1, x2}};
double wl[3];
for (int k = 0; k < 3; ++k) {
  cd v0 = cols[k][0], v1 = cols[k][1], v2 = cols[k][2];
  cd Av0 = a[0] * v0 + a[1] * v1 + a[2] * v2;
  cd Av1 = a[3] * v0 + a[4] * v1 + a[5] * v2;
  cd Av2 = a[6] * v0 + a[7] * v1 + a[8] * v2;
  wl[k] = (conj(v0) * Av0 + conj(v1) * Av1 + conj(v2) * Av2).real();
}
int ord[3] = {0, 1, 2};
for (int s = 0; s < 3; ++s) {           // three compare-swaps: ascending
  int u = s == 1 ? 1 : 0, v = u + 1;
  if (wl[ord[u]] > wl[ord[v]]) { int t = ord[u]; ord[u] = ord[v]; ord[v] = t; }
}
for (int k = 0; k < 3; ++k) {
  w[3 * (long long)i + k] = wl[ord[k]];
  for (int row = 0; row < 3; ++row) V[b + 3 * row + k] = cols[ord[k]][row];
}
"""


@functools.lru_cache(maxsize=None)
def _eigh3_kernel():
    return cupy.ElementwiseKernel("raw T A, float64 degenerate", "raw float64 w, raw complex128 V, raw bool bad",
                                  _EIGH3_BODY, "gaugeflow_eigh3", preamble=_EIGH3_PREAMBLE)


def eigh3(H):
    """Closed-form Hermitian 3x3 eigensystems on the device (lattice.kernels.eigh3), flagged
    matrices recomputed by cupy.linalg.eigh."""
    from .eigh3 import DEGENERATE
    shape = H.shape
    A = cupy.ascontiguousarray(H).reshape(-1, 3, 3)
    n = A.shape[0]
    w = cupy.empty((n, 3), dtype=cupy.float64)
    V = cupy.empty((n, 3, 3), dtype=cupy.complex128)
    bad = cupy.zeros(n, dtype=cupy.bool_)
    if n:
        _eigh3_kernel()(A, float(DEGENERATE), w, V, bad, size=n)
    if bool(bad.any()):
        idx = cupy.nonzero(bad)[0]
        wb, Vb = cupy.linalg.eigh(A[idx].astype(cupy.complex128))
        w[idx], V[idx] = wb, Vb
    rdt = cupy.float32 if H.dtype == cupy.complex64 else cupy.float64
    return w.reshape(shape[:-1]).astype(rdt, copy=False), V.reshape(shape).astype(H.dtype, copy=False)


def polar3(M):
    """Polar factors (W, s, Vh) on the device from :func:`eigh3` of M^dag M; ill-conditioned
    matrices (s_max / s_min > POLAR_MAX_COND) by cupy.linalg.svd."""
    from .eigh3 import POLAR_MAX_COND
    shape = M.shape
    A = cupy.ascontiguousarray(M, dtype=cupy.complex128).reshape(-1, 3, 3)
    lam, V = eigh3(cupy.conj(cupy.swapaxes(A, -1, -2)) @ A)
    lam, V = lam[:, ::-1], V[:, :, ::-1]
    s = cupy.sqrt(cupy.maximum(lam, 0.0))
    bad = ~(s[:, 2] * POLAR_MAX_COND > s[:, 0])
    W = A @ V
    W /= cupy.where(s > 0, s, 1.0)[:, None, :]
    Vh = cupy.conj(cupy.swapaxes(V, -1, -2))
    if bool(bad.any()):
        idx = cupy.nonzero(bad)[0]
        Wb, sb, Vhb = cupy.linalg.svd(A[idx], full_matrices=False)
        W[idx], s[idx], Vh[idx] = Wb, sb, Vhb
    rdt = cupy.float32 if M.dtype == cupy.complex64 else cupy.float64
    return (W.reshape(shape).astype(M.dtype, copy=False), s.reshape(shape[:-1]).astype(rdt, copy=False),
            Vh.reshape(shape).astype(M.dtype, copy=False))
