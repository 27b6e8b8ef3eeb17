"""Numba path of :mod:`lattice.kernels.lines` (N = 3, complex links).

Per row of the leading axes and block of ``_BLOCK`` start sites, each path's factors are read
through the table into a split (re, im) scratch (the dagger applied while loading), the chain
of (L1) runs on contiguous real vectors (the split products of
:mod:`lattice.kernels._numba_staples`), and the sum over paths is written once. The adjoint
keeps the factors and the prefixes of (L2) in the scratch and adds each factor's cotangent at
its link index (one thread, in order, so coinciding indices accumulate correctly).
"""
from __future__ import annotations

import numba
from ..backend import np  # NumPy itself: lattice.backend holds the one import

from ._numba import _FLAGS
from ._numba_staples import _nn, _nn_acc, _dn, _nd

_BLOCK = 256


@numba.jit(**_FLAGS)
def _load(Lf, r, e_pk, dag, i0, n, X):
    """X[:, i, j, q] = re/im of op(Lf[r, e_pk[i0 + q]])[i, j], op = dagger if ``dag``."""
    for q in range(n):
        e = e_pk[i0 + q]
        for i in range(3):
            for j in range(3):
                v = Lf[r, e, i, j]
                if dag:
                    X[0, j, i, q] = v.real
                    X[1, j, i, q] = -v.imag
                else:
                    X[0, i, j, q] = v.real
                    X[1, i, j, q] = v.imag


@numba.jit(**_FLAGS)
def _forward(Lf, edge, dag, W):
    """(L1): W[r, i] = sum_p prod_k op(Lf[r, edge[p, k, i]])."""
    P, K, n_all = edge.shape
    f = Lf.real.dtype
    a, b = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    fk, acc = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    for r in range(Lf.shape[0]):
        for i0 in range(0, n_all, _BLOCK):
            n = min(_BLOCK, n_all - i0)
            acc[:, :, :, :n] = 0.0
            for p in range(P):
                _load(Lf, r, edge[p, 0], dag[p, 0], i0, n, a)
                if K == 1:
                    acc[:, :, :, :n] += a[:, :, :, :n]
                for k in range(1, K):
                    _load(Lf, r, edge[p, k], dag[p, k], i0, n, fk)
                    if k == K - 1:
                        _nn_acc(a, fk, acc, n)
                    else:
                        _nn(a, fk, b, n)
                        a, b = b, a
            for q in range(n):
                for i in range(3):
                    for j in range(3):
                        W[r, i0 + q, i, j] = complex(acc[0, i, j, q], acc[1, i, j, q])


@numba.jit(**_FLAGS)
def _vjp(Lf, edge, dag, Wb, Lb):
    """(L2): Lb[r, edge[p, k, i]] += F_pk_bar (dagger for dagger factors)."""
    P, K, n_all = edge.shape
    f = Lf.real.dtype
    Fs = np.empty((K, 2, 3, 3, _BLOCK), f)
    Pre = np.empty((K, 2, 3, 3, _BLOCK), f)      # Pre[k] = F_0 ... F_k
    g, g2 = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    g0, fb = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    for r in range(Lf.shape[0]):
        for i0 in range(0, n_all, _BLOCK):
            n = min(_BLOCK, n_all - i0)
            for q in range(n):
                for i in range(3):
                    for j in range(3):
                        v = Wb[r, i0 + q, i, j]
                        g0[0, i, j, q] = v.real
                        g0[1, i, j, q] = v.imag
            for p in range(P):
                for k in range(K):
                    _load(Lf, r, edge[p, k], dag[p, k], i0, n, Fs[k])
                Pre[0, :, :, :, :n] = Fs[0, :, :, :, :n]
                for k in range(1, K - 1):
                    _nn(Pre[k - 1], Fs[k], Pre[k], n)
                g[:, :, :, :n] = g0[:, :, :, :n]
                for k in range(K - 1, -1, -1):
                    if k == 0:
                        fb[:, :, :, :n] = g[:, :, :, :n]
                    else:
                        _dn(Pre[k - 1], g, fb, n)             # F_k_bar = Pre_{k-1}^dag G_k
                        _nd(g, Fs[k], g2, n)                  # G_{k-1} = G_k F_k^dag
                        g, g2 = g2, g
                    e_pk = edge[p, k]
                    for q in range(n):
                        e = e_pk[i0 + q]
                        for i in range(3):
                            for j in range(3):
                                if dag[p, k]:
                                    Lb[r, e, j, i] += complex(fb[0, i, j, q], -fb[1, i, j, q])
                                else:
                                    Lb[r, e, i, j] += complex(fb[0, i, j, q], fb[1, i, j, q])


def _rows(L, table, nl):
    """L as a contiguous (R, Nd V, 3, 3) array and the lead shape, or None (N != 3, real)."""
    if L.shape[-1] != 3 or L.dtype.kind != "c":
        return None
    lead = tuple(L.shape[:nl])
    R = int(np.prod(lead))
    return np.ascontiguousarray(L).reshape(R, table.Nd * table.V, 3, 3), lead


def line_sums(L, table, nl):
    got = _rows(L, table, nl)
    if got is None:
        return None
    Lf, lead = got
    W = np.empty((Lf.shape[0], table.n, 3, 3), dtype=L.dtype)
    _forward(Lf, table.edge, table.dag, W)
    return W.reshape(lead + (table.n, 3, 3))


def line_sums_vjp(L, table, W_bar, nl, L_bar=None):
    got = _rows(L, table, nl)
    if got is None or (L_bar is not None and not L_bar.flags.c_contiguous):
        return None
    Lf, lead = got
    Wb = np.ascontiguousarray(W_bar, dtype=L.dtype).reshape(Lf.shape[0], table.n, 3, 3)
    Lb = np.zeros(Lf.shape, dtype=L.dtype) if L_bar is None else L_bar.reshape(Lf.shape)
    _vjp(Lf, table.edge, table.dag, Wb, Lb)
    return Lb.reshape(L.shape)
