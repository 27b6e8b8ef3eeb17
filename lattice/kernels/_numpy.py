"""NumPy helpers of the compiled (Numba) path of the kernel layer: contiguous copies and the
real-GEMM form of :func:`lattice.kernels.real_inner`."""
from __future__ import annotations

import numpy as np


def contiguous(X):
    return np.ascontiguousarray(X)


def real_inner(A, B):
    fa = np.ascontiguousarray(A, dtype=np.complex128)
    fb = np.ascontiguousarray(B, dtype=np.complex128)
    fa = fa.view(np.float64)                     # (..., K, 2M): (re, im) pairs
    fb = fb.view(np.float64)
    return fa @ np.swapaxes(fb, -1, -2)
