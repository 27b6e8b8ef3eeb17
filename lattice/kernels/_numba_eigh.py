"""Numba kernels of :mod:`lattice.kernels.eigh3` (closed-form Hermitian 3x3 eigensystems and
polar factors, with flagged matrices recomputed by LAPACK)."""
from __future__ import annotations

import math

import numba
from ..backend import np  # NumPy itself: lattice.backend holds the one import

from .eigh3 import DEGENERATE, POLAR_MAX_COND
from ._numba import _FLAGS

_TWO_PI_3 = 2.0 * math.pi / 3.0


@numba.jit(**_FLAGS)
def _null_vector(a00, a01, a02, a11, a12, a22, lam):
    """Unit null vector of the singular Hermitian A - lam (E2): the largest cross product of
    two rows. Returns (v0, v1, v2)."""
    b00 = a00 - lam
    b11 = a11 - lam
    b22 = a22 - lam
    # rows: r0 = (b00, a01, a02), r1 = (conj a01, b11, a12), r2 = (conj a02, conj a12, b22)
    r10, r20, r21 = a01.conjugate(), a02.conjugate(), a12.conjugate()
    # r0 x r1
    c0 = a01 * a12 - a02 * b11
    c1 = a02 * r10 - b00 * a12
    c2 = b00 * b11 - a01 * r10
    n01 = (c0 * c0.conjugate() + c1 * c1.conjugate() + c2 * c2.conjugate()).real
    # r0 x r2
    d0 = a01 * b22 - a02 * r21
    d1 = a02 * r20 - b00 * b22
    d2 = b00 * r21 - a01 * r20
    n02 = (d0 * d0.conjugate() + d1 * d1.conjugate() + d2 * d2.conjugate()).real
    # r1 x r2
    e0 = b11 * b22 - a12 * r21
    e1 = a12 * r20 - r10 * b22
    e2 = r10 * r21 - b11 * r20
    n12 = (e0 * e0.conjugate() + e1 * e1.conjugate() + e2 * e2.conjugate()).real
    if n01 >= n02 and n01 >= n12:
        s = 1.0 / math.sqrt(n01) if n01 > 0 else 0.0
        return c0 * s, c1 * s, c2 * s
    if n02 >= n12:
        s = 1.0 / math.sqrt(n02) if n02 > 0 else 0.0
        return d0 * s, d1 * s, d2 * s
    s = 1.0 / math.sqrt(n12) if n12 > 0 else 0.0
    return e0 * s, e1 * s, e2 * s


@numba.jit(**_FLAGS)
def _eigh3_kernel(A, w, V, bad, degenerate):
    for m in range(A.shape[0]):
        a00 = A[m, 0, 0].real
        a11 = A[m, 1, 1].real
        a22 = A[m, 2, 2].real
        a01 = A[m, 0, 1]
        a02 = A[m, 0, 2]
        a12 = A[m, 1, 2]
        q = (a00 + a11 + a22) / 3.0
        off = (a01 * a01.conjugate() + a02 * a02.conjugate() + a12 * a12.conjugate()).real
        b00, b11, b22 = a00 - q, a11 - q, a22 - q
        p2 = (b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * off) / 6.0
        if not (p2 > 0.0) or not math.isfinite(p2) or not math.isfinite(q):
            bad[m] = True
            continue
        p = math.sqrt(p2)
        if p <= 1e-12 * abs(q):          # spread at the rounding level of the shift: degenerate
            bad[m] = True
            continue
        # det(B)/p^3 / 2 with B = A - q (Hermitian: real)
        detB = (b00 * b11 * b22 + 2.0 * (a01 * a12 * a02.conjugate()).real
                - b00 * (a12 * a12.conjugate()).real - b11 * (a02 * a02.conjugate()).real
                - b22 * (a01 * a01.conjugate()).real)
        r = detB / (2.0 * p2 * p)
        r = min(1.0, max(-1.0, r))
        phi = math.acos(r) / 3.0
        lmax = q + 2.0 * p * math.cos(phi)
        lmin = q + 2.0 * p * math.cos(phi + _TWO_PI_3)
        lmid = 3.0 * q - lmax - lmin
        if min(lmax - lmid, lmid - lmin) <= degenerate * p:
            bad[m] = True
            continue
        x0, x1, x2 = _null_vector(A[m, 0, 0], a01, a02, A[m, 1, 1], a12, A[m, 2, 2], lmax)
        z0, z1, z2 = _null_vector(A[m, 0, 0], a01, a02, A[m, 1, 1], a12, A[m, 2, 2], lmin)
        # (E3) Gram-Schmidt z against x, then y = conj(x cross z)
        ov = x0.conjugate() * z0 + x1.conjugate() * z1 + x2.conjugate() * z2
        z0, z1, z2 = z0 - ov * x0, z1 - ov * x1, z2 - ov * x2
        nz = math.sqrt((z0 * z0.conjugate() + z1 * z1.conjugate() + z2 * z2.conjugate()).real)
        if not nz > 0.0:
            bad[m] = True
            continue
        z0, z1, z2 = z0 / nz, z1 / nz, z2 / nz
        y0 = (x1 * z2 - x2 * z1).conjugate()
        y1 = (x2 * z0 - x0 * z2).conjugate()
        y2 = (x0 * z1 - x1 * z0).conjugate()
        # columns ascending: z (min), y (mid), x (max); (E4) Rayleigh quotients
        cols = ((z0, z1, z2), (y0, y1, y2), (x0, x1, x2))
        for k in range(3):
            v0, v1, v2 = cols[k]
            Av0 = A[m, 0, 0] * v0 + a01 * v1 + a02 * v2
            Av1 = A[m, 1, 0] * v0 + A[m, 1, 1] * v1 + a12 * v2
            Av2 = A[m, 2, 0] * v0 + A[m, 2, 1] * v1 + A[m, 2, 2] * v2
            w[m, k] = (v0.conjugate() * Av0 + v1.conjugate() * Av1 + v2.conjugate() * Av2).real
            V[m, 0, k] = v0
            V[m, 1, k] = v1
            V[m, 2, k] = v2
        # keep ascending order after the Rayleigh quotients (swap neighbours; 3 elements)
        for a, b in ((0, 1), (1, 2), (0, 1)):
            if w[m, a] > w[m, b]:
                w[m, a], w[m, b] = w[m, b], w[m, a]
                for i in range(3):
                    V[m, i, a], V[m, i, b] = V[m, i, b], V[m, i, a]


def eigh3(H):
    shape = H.shape
    A = np.ascontiguousarray(H, dtype=np.complex128).reshape(-1, 3, 3)
    n = A.shape[0]
    w = np.empty((n, 3), dtype=np.float64)
    V = np.empty((n, 3, 3), dtype=np.complex128)
    bad = np.zeros(n, dtype=np.bool_)
    _eigh3_kernel(A, w, V, bad, DEGENERATE)
    if bad.any():
        wb, Vb = np.linalg.eigh(A[bad])
        w[bad], V[bad] = wb, Vb
    rdt = np.float32 if H.dtype == np.complex64 else np.float64
    return (w.reshape(shape[:-1]).astype(rdt, copy=False),
            V.reshape(shape).astype(H.dtype, copy=False))


def polar3(M):
    shape = M.shape
    A = np.ascontiguousarray(M, dtype=np.complex128).reshape(-1, 3, 3)
    H = np.conj(np.swapaxes(A, -1, -2)) @ A
    lam, V = eigh3(H)                                   # ascending
    del H
    lam, V = lam[:, ::-1], V[:, :, ::-1]                # descending
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.sqrt(np.maximum(lam, 0.0))
        bad = ~(s[:, 2] * POLAR_MAX_COND > s[:, 0])     # also catches NaN and s = 0
        W = A @ V
        W /= s[:, None, :]
    Vh = np.conj(np.swapaxes(V, -1, -2))
    if bad.any():
        Wb, sb, Vhb = np.linalg.svd(A[bad], full_matrices=False)
        W[bad], s[bad], Vh[bad] = Wb, sb, Vhb
    rdt = np.float32 if M.dtype == np.complex64 else np.float64
    return (W.reshape(shape).astype(M.dtype, copy=False), s.reshape(shape[:-1]).astype(rdt, copy=False),
            Vh.reshape(shape).astype(M.dtype, copy=False))
