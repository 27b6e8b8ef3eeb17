"""Hermitian 3x3 eigen-decomposition and the polar decomposition built on it.

:func:`eigh` has the contract of ``xp.linalg.eigh`` on stacks ``(..., N, N)`` (eigenvalues
ascending, shape ``(..., N)``; unitary eigenvectors as columns). For N = 3 on NumPy arrays the
compiled path uses closed forms per matrix:

* eigenvalues from the trigonometric solution of the characteristic cubic (Smith 1961): with
  q = tr A / 3, p = sqrt(tr (A - q)^2 / 6), r = det((A - q)/p) / 2,

      lambda_k = q + 2 p cos(arccos(r)/3 - 2 pi k/3),   k = 0, 1, 2;          (E1)

* eigenvectors of the extreme eigenvalues lambda_max, lambda_min as the largest of the three
  cross products of pairs of rows of A - lambda: rows r_i of a singular Hermitian matrix
  satisfy sum_k r_ik v_k = 0 for its null vector v, and r_i x r_j is orthogonal to both rows in
  that bilinear sense;                                                          (E2)
* v_min orthogonalised against v_max (Gram-Schmidt), v_mid = conj(v_max x v_min), the unit
  vector Hermitian-orthogonal to both, so V is unitary to rounding;            (E3)
* eigenvalues re-read as Rayleigh quotients v^dag A v (second-order accurate), kept
  ascending.                                                                    (E4)

The eigenvector error of (E2) is ~ eps ||A|| / gap. Where two eigenvalues nearly coincide,
min gap <= ``DEGENERATE`` * p, or p <= 1e-12 |q| (a spread at the rounding level of the
shift), or the input is not finite, the matrix is flagged and
recomputed by ``numpy.linalg.eigh`` (the well-conditioned fallback); for random Hermitian
matrices this is a fraction ~1e-6 of them (eigenvalue repulsion).

:func:`polar` returns the factors ``(W, s, Vh)`` of M = W diag(s) Vh (s descending), the
contract of :func:`lattice.su_n.polar_svd`. Closed form: H = M^dag M = V diag(s^2) V^dag by
:func:`eigh`, Vh = V^dag, W = M V diag(1/s). Columns of W are orthonormal to
~ eps (s_max / s_min)^2, so matrices with s_max/s_min > ``POLAR_MAX_COND`` (and those whose
eigen-decomposition was flagged) take the SVD instead.
"""
from __future__ import annotations

from ..backend import namespace
from .dispatch import implementation

__all__ = ["eigh", "polar", "DEGENERATE", "POLAR_MAX_COND"]

#: relative eigenvalue gap (in units of the spread p of (E1)) below which the fallback is used
DEGENERATE = 1e-2
#: condition number s_max / s_min above which :func:`polar` uses the SVD
POLAR_MAX_COND = 30.0


def eigh(H):
    """Eigenvalues (ascending) and eigenvectors of Hermitian ``(..., N, N)`` stacks, like
    ``xp.linalg.eigh``; closed form for N = 3 on the compiled path (module docstring)."""
    xp = namespace(H)
    if H.shape[-1] == 3 and H.shape[-2] == 3:
        impl = implementation(xp)
        if impl == "numba":
            from . import _numba_eigh
            return _numba_eigh.eigh3(H)
        if impl == "cupy":  # pragma: no cover - GPU only
            from . import _cupy
            return _cupy.eigh3(H)
    return xp.linalg.eigh(H)


def polar(M):
    """SVD-like factors ``(W, s, Vh)`` with M = W diag(s) Vh, s descending (the contract of
    :func:`lattice.su_n.polar_svd`); closed form for N = 3 on the compiled path."""
    xp = namespace(M)
    if M.shape[-1] == 3 and M.shape[-2] == 3:
        impl = implementation(xp)
        if impl == "numba":
            from . import _numba_eigh
            return _numba_eigh.polar3(M)
        if impl == "cupy":  # pragma: no cover - GPU only
            from . import _cupy
            return _cupy.polar3(M)
    return xp.linalg.svd(M, full_matrices=False)
