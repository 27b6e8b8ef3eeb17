"""NumPy helpers of the compiled (Numba) path of the kernel layer: contiguous copies and the
real-GEMM forms of :func:`lattice.kernels.real_inner` and :func:`lattice.kernels.real_mix`."""
from __future__ import annotations

from ..backend import np  # NumPy itself: lattice.backend holds the one import


def contiguous(X):
    return np.ascontiguousarray(X)


def real_inner(A, B):
    fa = np.ascontiguousarray(A, dtype=np.complex128)
    fb = np.ascontiguousarray(B, dtype=np.complex128)
    fa = fa.view(np.float64)                     # (..., K, 2M): (re, im) pairs
    fb = fb.view(np.float64)
    return fa @ np.swapaxes(fb, -1, -2)


def real_mix(c, A, transpose):
    a = np.ascontiguousarray(A)
    if a.dtype.kind != "c":
        cc = c.astype(a.dtype, copy=False)
        return (np.swapaxes(cc, -1, -2) if transpose else cc) @ a
    cr = np.asarray(c).astype(a.real.dtype, copy=False)
    if transpose:
        cr = np.swapaxes(cr, -1, -2)
    af = a.view(a.real.dtype)
    if cr.shape[-1] == 1 and af.shape[-2] == 1:
        # one input channel: an outer product, which a broadcast multiply writes at memory speed
        # (OpenBLAS takes 3-4x longer for a GEMM with inner dimension 1)
        return (cr * af).view(a.dtype)
    return (cr @ af).view(a.dtype)   # (..., K, 2M) floats = (..., K, M) complex
