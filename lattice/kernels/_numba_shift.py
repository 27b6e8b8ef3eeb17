"""Numba path of :func:`lattice.kernels.periodic_shift` (NumPy arrays)."""
from __future__ import annotations

import functools
import math

import numba
from ..backend import np  # NumPy itself: lattice.backend holds the one import

from ._numba import _FLAGS
from .shift import BLOCK

#: runs of at least this many contiguous entries after the shifted axis: NumPy's slice copies
#: are as fast as the permutation (measured, 4^4 sites, complex128)
RUN = 8


@numba.jit(**_FLAGS)
def _permute_rows(F, out, perm):
    """out[a, b, t] = F[a, b, perm[t]] (3-d views with any strides)."""
    T = perm.shape[0]
    for a in range(F.shape[0]):
        for b in range(F.shape[1]):
            for t in range(T):
                out[a, b, t] = F[a, b, perm[t]]


@functools.lru_cache(maxsize=256)
def _perm(block: tuple, axis: int, k: int):
    idx = np.arange(int(np.prod(block)), dtype=np.int64).reshape(block)
    return np.ascontiguousarray(np.roll(idx, -k, axis=axis).ravel())


def _c_contiguous_from(X, start):
    """Whether X's axes ``start:`` form one C-contiguous block."""
    step = X.itemsize
    for n, s in zip(reversed(X.shape[start:]), reversed(X.strides[start:])):
        if n != 1 and s != step:
            return False
        step *= n
    return True


def _row_groups(shape, arrays):
    """Merge the leading axes ``shape`` into groups that are one strided axis in every array:
    a list of (size, [stride per array])."""
    groups = []
    for ax, n in enumerate(shape):
        st = [X.strides[ax] for X in arrays]
        if n == 1:
            continue
        if groups and all(g == s * n for g, s in zip(groups[-1][1], st)):
            groups[-1] = (groups[-1][0] * n, st)
        else:
            groups.append((n, st))
    return groups


def periodic_shift(F, axis: int, k: int, out):
    """The compiled shift, or None where the slice copies are as fast (runs of >= RUN
    entries after ``axis``) or the views do not fit it (the caller falls back)."""
    L = F.shape[axis]
    k = k % L if L else 0
    if F.size == 0 or (out is None and k == 0):
        return None if out is not None else F
    if out is None:
        out = np.empty(F.shape, dtype=F.dtype)
    elif out.dtype != F.dtype or np.shares_memory(out, F):
        return None
    if math.prod(F.shape[axis + 1:]) >= RUN:
        return None                      # long contiguous runs: the slice copies are as fast
    start, size = axis, math.prod(F.shape[axis:])
    if not (_c_contiguous_from(F, start) and _c_contiguous_from(out, start)):
        return None
    while (start > 0 and size < BLOCK                    # a long enough trailing vector
           and _c_contiguous_from(F, start - 1) and _c_contiguous_from(out, start - 1)):
        start -= 1
        size *= F.shape[start]
    groups = _row_groups(F.shape[:start], (F, out))
    if len(groups) > 2:
        return None
    groups = [(1, [0, 0])] * (2 - len(groups)) + groups
    shape3 = (groups[0][0], groups[1][0], size)
    views = [np.lib.stride_tricks.as_strided(X, shape3, (groups[0][1][j], groups[1][1][j], X.itemsize))
             for j, X in enumerate((F, out))]
    _permute_rows(views[0], views[1], _perm(tuple(F.shape[start:]), axis - start, k))
    return out
