"""Numba path of :mod:`lattice.kernels.staple_pairs`: each pair's product chain (P1)-(P3) or
(A1)-(A2) runs block by block over the sites, the intermediates (Y_mn, Y_nm, Ynm_b, Ymn_b) in
a scratch of ``_BLOCK`` sites that stays in cache. N = 3 only (else the caller composes)."""
from __future__ import annotations

import numba
import numpy as np

from ._numba import _FLAGS

_BLOCK = 256


def _make_block_mul(da: bool, db: bool, acc: bool):
    """C[:, :, qc, oc:oc+n] (+)= op(A[:, :, qa, oa:oa+n]) op(B[:, :, qb, ob:ob+n]), 4-d
    C-contiguous arrays (3, 3, P, M), N = 3 unrolled."""
    @numba.jit(**_FLAGS)
    def block_mul(A, qa, oa, B, qb, ob, C, qc, oc, n):
        for i in range(3):
            for j in range(3):
                for m in range(n):
                    if da:
                        x0 = A[0, i, qa, oa + m].conjugate()
                        x1 = A[1, i, qa, oa + m].conjugate()
                        x2 = A[2, i, qa, oa + m].conjugate()
                    else:
                        x0, x1, x2 = A[i, 0, qa, oa + m], A[i, 1, qa, oa + m], A[i, 2, qa, oa + m]
                    if db:
                        y0 = B[j, 0, qb, ob + m].conjugate()
                        y1 = B[j, 1, qb, ob + m].conjugate()
                        y2 = B[j, 2, qb, ob + m].conjugate()
                    else:
                        y0, y1, y2 = B[0, j, qb, ob + m], B[1, j, qb, ob + m], B[2, j, qb, ob + m]
                    if acc:
                        C[i, j, qc, oc + m] += x0 * y0 + x1 * y1 + x2 * y2
                    else:
                        C[i, j, qc, oc + m] = x0 * y0 + x1 * y1 + x2 * y2
    return block_mul


_nn = _make_block_mul(False, False, False)
_dn = _make_block_mul(True, False, False)
_nd = _make_block_mul(False, True, False)
_dn_acc = _make_block_mul(True, False, True)
_nd_acc = _make_block_mul(False, True, True)


@numba.jit(**_FLAGS)
def _forward(S, T, i_mu, i_nu, i_mn, i_nm, D, R, oR):
    M = S.shape[3]
    W = np.empty((3, 3, 2, _BLOCK), dtype=S.dtype)            # Y_mn, Y_nm
    for q in range(i_mu.shape[0]):
        mu, nu, mn, nm = i_mu[q], i_nu[q], i_mn[q], i_nm[q]
        for m0 in range(0, M, _BLOCK):
            n = min(_BLOCK, M - m0)
            _nn(S, mu, m0, T, mn, m0, W, 0, 0, n)               # (P1) Y_mn = S_mu T_mn
            _nn(S, nu, m0, T, nm, m0, W, 1, 0, n)               #      Y_nm = S_nu T_nm
            _dn(S, nu, m0, W, 0, 0, D, q, m0, n)                # (P2) D = S_nu^dag Y_mn
            _nd(W, 1, 0, T, mn, m0, R, oR[q], m0, n)            # (P3) R = Y_nm T_mn^dag


@numba.jit(**_FLAGS)
def _vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb, iR, Db, Sb, Tb):
    M = S.shape[3]
    W = np.empty((3, 3, 4, _BLOCK), dtype=S.dtype)            # Y_mn, Y_nm, Ynm_b, Ymn_b
    for q in range(i_mu.shape[0]):
        mu, nu, mn, nm, r = i_mu[q], i_nu[q], i_mn[q], i_nm[q], iR[q]
        for m0 in range(0, M, _BLOCK):
            n = min(_BLOCK, M - m0)
            _nn(S, mu, m0, T, mn, m0, W, 0, 0, n)               # Y_mn
            _nn(S, nu, m0, T, nm, m0, W, 1, 0, n)               # Y_nm
            _nn(Rb, r, m0, T, mn, m0, W, 2, 0, n)               # (A1) Ynm_b = Rb T_mn
            _dn_acc(Rb, r, m0, W, 1, 0, Tb, mn, m0, n)          #      T_mn_b += Rb^dag Y_nm
            _nd_acc(W, 2, 0, T, nm, m0, Sb, nu, m0, n)          #      S_nu_b += Ynm_b T_nm^dag
            _dn_acc(S, nu, m0, W, 2, 0, Tb, nm, m0, n)          #      T_nm_b += S_nu^dag Ynm_b
            _nd_acc(W, 0, 0, Db, q, m0, Sb, nu, m0, n)          # (A2) S_nu_b += Y_mn Db^dag
            _nn(S, nu, m0, Db, q, m0, W, 3, 0, n)               #      Ymn_b = S_nu Db
            _dn_acc(S, mu, m0, W, 3, 0, Tb, mn, m0, n)          #      T_mn_b += S_mu^dag Ymn_b
            _nd_acc(W, 3, 0, T, mn, m0, Sb, mu, m0, n)          #      S_mu_b += Ymn_b T_mn^dag


def _flat4(X, dtype):
    """A C-contiguous (3, 3, P, M) view of X of the given dtype, or None."""
    if X.shape[0] != 3 or X.shape[1] != 3 or X.dtype != dtype or not X.flags.c_contiguous:
        return None
    return X.reshape(3, 3, X.shape[2], -1)


def _idx(v):
    return np.asarray(v, dtype=np.int64)


def forward(S, T, i_mu, i_nu, i_mn, i_nm, D, R, oR) -> bool:
    """Run (P1)-(P3) compiled; False where the arrays do not fit (N != 3, mixed dtypes,
    non-contiguous outputs): the caller composes instead."""
    dtype = S.dtype
    if dtype.kind != "c":
        return False
    views = [_flat4(X, dtype) for X in (S, T, D, R)]
    if any(v is None for v in views):
        return False
    _forward(*views[:2], _idx(i_mu), _idx(i_nu), _idx(i_mn), _idx(i_nm), views[2], views[3], _idx(oR))
    return True


def vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb, iR, Db, S_bar, T_bar) -> bool:
    """Run (A1)-(A2) compiled; False where the arrays do not fit (the caller composes)."""
    dtype = S.dtype
    if dtype.kind != "c":
        return False
    views = [_flat4(X, dtype) for X in (S, T, Rb, Db, S_bar, T_bar)]
    if any(v is None for v in views):
        return False
    s, t, rb, db, sb, tb = views
    _vjp(s, t, _idx(i_mu), _idx(i_nu), _idx(i_mn), _idx(i_nm), rb, _idx(iR), db, sb, tb)
    return True
