"""Numba fast paths of the kernel layer for NumPy arrays (CPU).

Each kernel is a loop nest compiled once per dtype with the site index innermost, so that the
compiler vectorises it over contiguous colour-first vectors (``fastmath`` restricted to
re-association and FMA contraction: NaN and Inf still propagate). Compiled code is cached on
disk (``cache=True``), so a process pays the compilation (about a second per kernel and
dtype) only the first time.

Kernels run single-threaded: the parallelism of a job is its MPI ranks (and BLAS threads for
the dense products, ``job.threads``).
"""
from __future__ import annotations

import numba
from ..backend import np  # NumPy itself: lattice.backend holds the one import

from ._numba_cache import install as _install_cache_locks

_install_cache_locks()      # before any kernel is compiled or loaded: the cache is shared by MPI ranks

_FLAGS = dict(nopython=True, nogil=True, cache=True, boundscheck=False,
              fastmath={"reassoc", "contract", "nsz", "arcp"})
_BLOCK = 512          # sites per block: a block of all operands stays in L1/L2


def _make_mul(da: bool, db: bool):
    @numba.jit(**_FLAGS)
    def kernel(A, B, C):
        N = A.shape[0]
        M = A.shape[2]
        for m0 in range(0, M, _BLOCK):
            m1 = min(m0 + _BLOCK, M)
            for i in range(N):
                for j in range(N):
                    for m in range(m0, m1):
                        C[i, j, m] = 0
                    for k in range(N):
                        for m in range(m0, m1):
                            if da:
                                x = A[k, i, m].conjugate()
                            else:
                                x = A[i, k, m]
                            if db:
                                y = B[j, k, m].conjugate()
                            else:
                                y = B[k, j, m]
                            C[i, j, m] += x * y
    return kernel


def _make_mul3(da: bool, db: bool):
    """N = 3, fully unrolled over k."""
    @numba.jit(**_FLAGS)
    def kernel(A, B, C):
        M = A.shape[2]
        for i in range(3):
            for j in range(3):
                for m in range(M):
                    if da:
                        x0, x1, x2 = A[0, i, m].conjugate(), A[1, i, m].conjugate(), A[2, i, m].conjugate()
                    else:
                        x0, x1, x2 = A[i, 0, m], A[i, 1, m], A[i, 2, m]
                    if db:
                        y0, y1, y2 = B[j, 0, m].conjugate(), B[j, 1, m].conjugate(), B[j, 2, m].conjugate()
                    else:
                        y0, y1, y2 = B[0, j, m], B[1, j, m], B[2, j, m]
                    C[i, j, m] = x0 * y0 + x1 * y1 + x2 * y2
    return kernel


def _make_mul3_gather(da: bool, db: bool, acc: bool):
    """N = 3 with operands gathered along axis 2 and results scattered along it:
    C[:, :, oc[q]] (+)= op(A[:, :, ia[q]]) op(B[:, :, ib[q]])."""
    @numba.jit(**_FLAGS)
    def kernel(A, B, C, ia, ib, oc):
        R = A.shape[3]
        for q in range(ia.shape[0]):
            qa, qb, qc = ia[q], ib[q], oc[q]
            for m0 in range(0, R, _BLOCK):       # a block of 18 input vectors stays in cache
                m1 = min(m0 + _BLOCK, R)
                for i in range(3):
                    for j in range(3):
                        for m in range(m0, m1):
                            if da:
                                x0 = A[0, i, qa, m].conjugate()
                                x1 = A[1, i, qa, m].conjugate()
                                x2 = A[2, i, qa, m].conjugate()
                            else:
                                x0, x1, x2 = A[i, 0, qa, m], A[i, 1, qa, m], A[i, 2, qa, m]
                            if db:
                                y0 = B[j, 0, qb, m].conjugate()
                                y1 = B[j, 1, qb, m].conjugate()
                                y2 = B[j, 2, qb, m].conjugate()
                            else:
                                y0, y1, y2 = B[0, j, qb, m], B[1, j, qb, m], B[2, j, qb, m]
                            if acc:
                                C[i, j, qc, m] += x0 * y0 + x1 * y1 + x2 * y2
                            else:
                                C[i, j, qc, m] = x0 * y0 + x1 * y1 + x2 * y2
    return kernel


_MUL = {(da, db): _make_mul(da, db) for da in (False, True) for db in (False, True)}
_MUL3 = {(da, db): _make_mul3(da, db) for da in (False, True) for db in (False, True)}
_MUL3G = {(da, db, acc): _make_mul3_gather(da, db, acc) for da in (False, True) for db in (False, True)
          for acc in (False, True)}


def _flat(X, N, rest, dtype):
    X = np.broadcast_to(X, (N, N) + rest) if tuple(X.shape[2:]) != rest else X
    X = np.ascontiguousarray(X, dtype=dtype)
    return X.reshape(N, N, -1)


def mul_gather(A, B, da: bool, db: bool, ia, ib, out=None, oc=None, accumulate=False):
    """C[:, :, oc[q]] (+)= op(A[:, :, ia[q]]) op(B[:, :, ib[q]]) for A, B (and out) of one shape
    beyond axis 2; None where this path does not apply (the caller falls back)."""
    N = A.shape[0]
    if N != 3 or tuple(A.shape[3:]) != tuple(B.shape[3:]):
        return None
    dtype = np.result_type(A.dtype, B.dtype)
    rest = tuple(A.shape[3:])
    if out is not None and (not out.flags.c_contiguous or out.dtype != dtype or tuple(out.shape[3:]) != rest):
        return None
    a = np.ascontiguousarray(A, dtype=dtype).reshape(N, N, A.shape[2], -1)
    b = np.ascontiguousarray(B, dtype=dtype).reshape(N, N, B.shape[2], -1)
    C = np.empty((N, N, len(ia)) + rest, dtype=dtype) if out is None else out
    oc = np.arange(len(ia), dtype=np.int64) if oc is None else np.asarray(oc, dtype=np.int64)
    _MUL3G[(bool(da), bool(db), bool(accumulate))](a, b, C.reshape(N, N, C.shape[2], -1),
                                                   np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64), oc)
    return C


def mul(A, B, da: bool, db: bool, out):
    N = A.shape[0]
    rest = tuple(np.broadcast_shapes(A.shape[2:], B.shape[2:]))
    dtype = np.result_type(A.dtype, B.dtype)
    a, b = _flat(A, N, rest, dtype), _flat(B, N, rest, dtype)
    direct = out is not None and out.flags.c_contiguous and out.dtype == dtype
    C = out if direct else np.empty((N, N) + rest, dtype=dtype)
    (_MUL3 if N == 3 else _MUL)[(bool(da), bool(db))](a, b, C.reshape(N, N, -1))
    if out is not None and not direct:
        out[...] = C
        return out
    return C


def _make_matmul3(da: bool, db: bool):
    """Colour-last N = 3: C[m] = op(A[m]) op(B[m]), one matrix per iteration, fully unrolled."""
    @numba.jit(**_FLAGS)
    def kernel(A, B, C):
        for m in range(A.shape[0]):
            for i in range(3):
                if da:
                    x0, x1, x2 = A[m, 0, i].conjugate(), A[m, 1, i].conjugate(), A[m, 2, i].conjugate()
                else:
                    x0, x1, x2 = A[m, i, 0], A[m, i, 1], A[m, i, 2]
                for j in range(3):
                    if db:
                        y0, y1, y2 = B[m, j, 0].conjugate(), B[m, j, 1].conjugate(), B[m, j, 2].conjugate()
                    else:
                        y0, y1, y2 = B[m, 0, j], B[m, 1, j], B[m, 2, j]
                    C[m, i, j] = x0 * y0 + x1 * y1 + x2 * y2
    return kernel


_MATMUL3 = {(da, db): _make_matmul3(da, db) for da in (False, True) for db in (False, True)}


def _make_matmul3_strided(da: bool, db: bool):
    """C[p, q] = op(A[p, q]) op(B[p, q]) on 4-d views (P, Q, 3, 3) with any strides: link
    slices U[..., mu, ...] and other views are read in place instead of copied."""
    @numba.jit(**_FLAGS)
    def kernel(A, B, C):
        for p in range(A.shape[0]):
            for q in range(A.shape[1]):
                for i in range(3):
                    if da:
                        x0, x1, x2 = A[p, q, 0, i].conjugate(), A[p, q, 1, i].conjugate(), A[p, q, 2, i].conjugate()
                    else:
                        x0, x1, x2 = A[p, q, i, 0], A[p, q, i, 1], A[p, q, i, 2]
                    for j in range(3):
                        if db:
                            y0, y1, y2 = B[p, q, j, 0].conjugate(), B[p, q, j, 1].conjugate(), B[p, q, j, 2].conjugate()
                        else:
                            y0, y1, y2 = B[p, q, 0, j], B[p, q, 1, j], B[p, q, 2, j]
                        C[p, q, i, j] = x0 * y0 + x1 * y1 + x2 * y2
    return kernel


_MATMUL3_STRIDED = {(da, db): _make_matmul3_strided(da, db) for da in (False, True) for db in (False, True)}


def _strided_views(lead, A, B):
    """(P, Q, 3, 3) views of A and B (same lead shape, any strides) whose lead axes merge into at
    most two strided axes in both, or None."""
    groups = []
    for ax, n in enumerate(lead):
        if n == 1:
            continue
        st = (A.strides[ax], B.strides[ax])
        if groups and groups[-1][1] == (st[0] * n, st[1] * n):
            groups[-1] = (groups[-1][0] * n, st)
        else:
            groups.append((n, st))
    if len(groups) > 2:
        return None
    groups = [(1, (0, 0))] * (2 - len(groups)) + groups
    shape = (groups[0][0], groups[1][0], 3, 3)
    return [np.lib.stride_tricks.as_strided(X, shape, (groups[0][1][k], groups[1][1][k]) + X.strides[-2:])
            for k, X in enumerate((A, B))]


def matmul(A, B, da: bool, db: bool):
    """Colour-last product, or None where this path does not apply (N != 3)."""
    if A.shape[-1] != 3 or B.shape[-1] != 3 or A.shape[-2] != 3 or B.shape[-2] != 3:
        return None
    lead = tuple(np.broadcast_shapes(A.shape[:-2], B.shape[:-2]))
    dtype = np.result_type(A.dtype, B.dtype)
    if dtype.kind != "c":
        return None
    C = np.empty(lead + (3, 3), dtype=dtype)
    contiguous = A.flags.c_contiguous and B.flags.c_contiguous
    if not contiguous and tuple(A.shape[:-2]) == lead and tuple(B.shape[:-2]) == lead and \
            A.dtype == dtype and B.dtype == dtype:
        views = _strided_views(lead, A, B)
        if views is not None:
            P, Q = views[0].shape[:2]
            _MATMUL3_STRIDED[(bool(da), bool(db))](views[0], views[1], C.reshape(P, Q, 3, 3))
            return C
    a = np.ascontiguousarray(np.broadcast_to(A, lead + (3, 3)) if tuple(A.shape[:-2]) != lead else A, dtype=dtype)
    b = np.ascontiguousarray(np.broadcast_to(B, lead + (3, 3)) if tuple(B.shape[:-2]) != lead else B, dtype=dtype)
    _MATMUL3[(bool(da), bool(db))](a.reshape(-1, 3, 3), b.reshape(-1, 3, 3), C.reshape(-1, 3, 3))
    return C
