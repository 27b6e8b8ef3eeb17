"""NumPy fast paths of the kernel layer: unrolled entry-wise formulas on colour-first arrays,
written into preallocated outputs (no temporaries beyond one vector per call)."""
from __future__ import annotations

import numpy as np


def contiguous(X):
    return np.ascontiguousarray(X)


def mul(A, B, da: bool, db: bool, out):
    N = A.shape[0]
    rest = np.broadcast_shapes(A.shape[2:], B.shape[2:])
    dtype = np.result_type(A.dtype, B.dtype)
    C = np.empty((N, N) + rest, dtype=dtype) if out is None else out
    a = np.conj(A) if da else A
    b = np.conj(B) if db else B
    tmp = np.empty(rest, dtype=dtype)
    for i in range(N):
        for j in range(N):
            c = C[i, j]
            for k in range(N):
                x = a[k, i] if da else a[i, k]
                y = b[j, k] if db else b[k, j]
                if k == 0:
                    np.multiply(x, y, out=c)
                else:
                    np.multiply(x, y, out=tmp)
                    np.add(c, tmp, out=c)
    return C


def real_inner(A, B):
    fa = np.ascontiguousarray(A, dtype=np.complex128)
    fb = np.ascontiguousarray(B, dtype=np.complex128)
    fa = fa.view(np.float64)                     # (..., K, 2M): (re, im) pairs
    fb = fb.view(np.float64)
    return fa @ np.swapaxes(fb, -1, -2)
