"""Numba path of :func:`lattice.kernels.expm` (N = 3, colour-last stacks), (X1)-(X4)."""
from __future__ import annotations

import math

import numba
from ..backend import np  # NumPy itself: lattice.backend holds the one import

from ._numba import _FLAGS
from .expm3 import check_entries


@numba.jit(**_FLAGS)
def _expm3_kernel(X, E, terms):
    Y = np.empty((3, 3), dtype=X.dtype)
    Y2 = np.empty((3, 3), dtype=X.dtype)
    R = np.empty((3, 3), dtype=X.dtype)
    for m in range(X.shape[0]):
        nrm2 = 0.0
        for i in range(3):
            for j in range(3):
                v = X[m, i, j]
                nrm2 += v.real * v.real + v.imag * v.imag
        nrm = math.sqrt(nrm2)
        s = 0
        if nrm > 1.0:                                               # (X1)
            s = int(math.ceil(math.log2(nrm)))
        scale = 0.5 ** s
        for i in range(3):
            for j in range(3):
                Y[i, j] = X[m, i, j] * scale
        for i in range(3):
            for j in range(3):
                Y2[i, j] = Y[i, 0] * Y[0, j] + Y[i, 1] * Y[1, j] + Y[i, 2] * Y[2, j]
        t1 = Y[0, 0] + Y[1, 1] + Y[2, 2]                           # (X2)
        t2 = Y2[0, 0] + Y2[1, 1] + Y2[2, 2]
        t3 = 0.0j
        for i in range(3):
            for j in range(3):
                t3 += Y2[i, j] * Y[j, i]
        e1 = t1
        e2 = (e1 * t1 - t2) / 2.0
        e3 = (e2 * t1 - e1 * t2 + t3) / 3.0
        a0, a1, a2 = 1.0 + 0.0j, 0.0j, 0.0j                         # (X3)
        c0, c1, c2 = a0, a1, a2
        fact = 1.0
        for n in range(1, terms + 1):
            top = a2
            a0, a1, a2 = top * e3, a0 - top * e2, a1 + top * e1
            fact /= n
            c0 += fact * a0
            c1 += fact * a1
            c2 += fact * a2
        for i in range(3):
            for j in range(3):
                R[i, j] = c1 * Y[i, j] + c2 * Y2[i, j]
            R[i, i] += c0
        for _ in range(s):                                          # (X4)
            for i in range(3):
                for j in range(3):
                    Y[i, j] = R[i, 0] * R[0, j] + R[i, 1] * R[1, j] + R[i, 2] * R[2, j]
            for i in range(3):
                for j in range(3):
                    R[i, j] = Y[i, j]
        for i in range(3):
            for j in range(3):
                E[m, i, j] = R[i, j]


def expm3(X, terms):
    """exp of a (..., 3, 3) complex stack, or None where this path does not apply."""
    if X.dtype.kind != "c":
        return None
    x = np.ascontiguousarray(X).reshape(-1, 3, 3)
    check_entries(x, np)
    E = np.empty(x.shape, dtype=X.dtype)
    _expm3_kernel(x, E, terms)
    return E.reshape(X.shape)
