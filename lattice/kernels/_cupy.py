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
