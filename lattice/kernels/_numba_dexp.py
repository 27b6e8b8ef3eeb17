"""Numba path of :mod:`lattice.kernels.dexp`: (D2) and (D3) on blocks of ``_BLOCK`` matrices
transposed to (n, n, block), the matrix index innermost so that every entry loop vectorises;
the adjoint recomputes the Horner intermediates of its block in a scratch (K + 1 matrices)."""
from __future__ import annotations

import numba
from ..backend import np  # NumPy itself: lattice.backend holds the one import

from ._numba import _FLAGS

_BLOCK = 64


@numba.jit(**_FLAGS)
def _mac(q, a, p, m):
    """q[:m] += a[:m] * p[:m] (1-d views: the loop the compiler vectorises)."""
    for j in range(m):
        q[j] += a[j] * p[j]


# Each step of (D2)/(D3) is its own compiled function: inlined into one loop nest, LLVM
# vectorised the products of the adjoint far worse (2x slower).

def _make_product(tx: bool, ty: bool):
    """Q[r, c] = sum_t op(X)[r, t] op(Y)[t, c] for matrices x0..x0+m of X and 0..m of Y
    ((n, n, *) C-contiguous blocks), op = transpose where ``tx`` / ``ty`` (compile-time
    constants). X comes with an offset, not as a slice: a sliced view has a non-contiguous
    type and its loops do not vectorise (3x slower)."""
    @numba.jit(**_FLAGS)
    def product(Q, X, x0, Y, m):
        n = Q.shape[0]
        for r in range(n):
            for c in range(n):
                Q[r, c, :m] = 0.0
            for t in range(n):
                a = X[t, r, x0:x0 + m] if tx else X[r, t, x0:x0 + m]
                for c in range(n):
                    _mac(Q[r, c], a, Y[c, t] if ty else Y[t, c], m)
    return product


_nn = _make_product(False, False)
_nt = _make_product(False, True)
_tn = _make_product(True, False)


@numba.jit(**_FLAGS)
def _horner_step(Q, A, j0, P, Pn, m, den):
    """Pn = 1 - A P / den for the matrices j0..j0+m of A (Q a scratch)."""
    _nn(Q, A, j0, P, m)
    for r in range(Q.shape[0]):
        for c in range(Q.shape[0]):
            one = 1.0 if r == c else 0.0
            q, o = Q[r, c], Pn[r, c]
            for j in range(m):
                o[j] = one - q[j] / den


@numba.jit(**_FLAGS)
def _abar_step(Q, Pb, P, Ab, m, den):
    """Ab -= Pb P^T / den."""
    _nt(Q, Pb, 0, P, m)
    for r in range(Q.shape[0]):
        for c in range(Q.shape[0]):
            q, o = Q[r, c], Ab[r, c]
            for j in range(m):
                o[j] -= q[j] / den


@numba.jit(**_FLAGS)
def _pbar_step(Q, A, j0, Pb, m, den):
    """Pb <- -A^T Pb / den (matrices j0..j0+m of A)."""
    _tn(Q, A, j0, Pb, m)
    for r in range(Q.shape[0]):
        for c in range(Q.shape[0]):
            q, o = Q[r, c], Pb[r, c]
            for j in range(m):
                o[j] = -q[j] / den


@numba.jit(**_FLAGS)
def _horner(At, j0, m, K, S, Q):
    """S[k] = P_{k+1} of (D2) for k = 0..K (S[K] = 1, S[0] = P_1 = phi) for the matrices
    j0..j0+m of At (n, n, M); Q a scratch (n, n, >= m)."""
    n = At.shape[0]
    for r in range(n):
        for c in range(n):
            S[K, r, c, :m] = 1.0 if r == c else 0.0
    for k in range(K, 0, -1):
        _horner_step(Q, At, j0, S[k], S[k - 1], m, k + 1.0)


@numba.jit(**_FLAGS)
def _phi_kernel(At, K, Gt, adjoint, Out):
    """Out = phi(A) (D2), or with ``adjoint`` Abar of (D3) for the cotangents Gt, block by block."""
    n, M = At.shape[0], At.shape[2]
    S = np.empty((K + 1, n, n, _BLOCK))
    Q = np.empty((n, n, _BLOCK))
    Pb = np.empty((n, n, _BLOCK))
    Ab = np.empty((n, n, _BLOCK))
    for j0 in range(0, M, _BLOCK):
        m = min(_BLOCK, M - j0)
        _horner(At, j0, m, K, S, Q)
        if adjoint:
            for r in range(n):
                for c in range(n):
                    Pb[r, c, :m] = Gt[r, c, j0:j0 + m]
                    Ab[r, c, :m] = 0.0
            for k in range(1, K + 1):
                _abar_step(Q, Pb, S[k], Ab, m, k + 1.0)      # S[k] = P_{k+1}
                _pbar_step(Q, At, j0, Pb, m, k + 1.0)
        res = Ab if adjoint else S[0]
        for r in range(n):
            for c in range(n):
                Out[r, c, j0:j0 + m] = res[r, c, :m]


def _soa(A):
    n = A.shape[-1]
    return np.ascontiguousarray(np.moveaxis(np.reshape(A, (-1, n, n)), 0, -1))


def _run(A, K, phi_bar):
    At = _soa(A)
    Gt = At if phi_bar is None else _soa(np.broadcast_to(phi_bar, A.shape))
    Out = np.empty_like(At)
    if At.shape[-1]:
        _phi_kernel(At, int(K), Gt, phi_bar is not None, Out)
    return np.moveaxis(Out, -1, 0).reshape(A.shape)


def phi_ad(A, K: int):
    """phi(A) of (D2), float64 (..., n, n)."""
    return _run(A, K, None)


def phi_ad_vjp(A, K: int, phi_bar):
    """Abar of (D3), float64 (..., n, n)."""
    return _run(A, K, phi_bar)
