"""The derivative map of exp in the adjoint representation: phi(ad X) and its adjoint.

For X in su(N) and the left-trivialised differential of the exponential,
d exp_X(delta) = [(e^{ad X} - 1)/ad X] delta e^X, the residual flows (:mod:`flows.residual`,
eqs. (R3)-(R4)) need the real (N^2 - 1) x (N^2 - 1) matrix

    phi(A) = (1 - e^{-A}) / A = sum_{n >= 0} (-A)^n / (n + 1)!,     A = ad X,            (D1)

(the transpose of (e^A - 1)/A for antisymmetric A), and the cotangent of A from that of
phi(A). Evaluation by the Taylor series in Horner form,

    P_{K+1} = 1,   P_n = 1 - A P_{n+1} / (n + 1)   (n = K, ..., 1),   phi = P_1,             (D2)

with the fewest terms K whose remainder bound a^(K+1)/(K+2)! / (1 - a/(K+3)) is below
``PHI_SERIES_TOL`` = 1e-17, a = the largest Frobenius norm ||A||_F in the stack
(:func:`phi_terms`: 6 terms at a = 0.01, 9 at 0.1, 17 at 1). The adjoint runs (D2)
backwards: with Pbar_1 = phibar, for k = 1, ..., K

    Abar -= Pbar_k P_{k+1}^T / (k + 1),    Pbar_{k+1} = -A^T Pbar_k / (k + 1).               (D3)

Implementations (:mod:`lattice.kernels`): the array-API reference keeps the Horner
intermediates P_2 ... P_{K+1} for (D3) (K matrices per link); the Numba path runs blocks of
matrices with the matrix index innermost (vectorised) and recomputes the intermediates in the
adjoint, so that it keeps nothing but K; the CuPy path (:mod:`lattice.kernels._cupy_exp`, one
thread per matrix, n <= 8) evaluates the adjoint as the derivative at A^T by Horner on a
block-triangular matrix, also without stored intermediates. All use the same K (fixed by the
whole stack), so they agree to rounding. Real float64 stacks ``(..., n, n)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..backend import namespace
from .dispatch import implementation

__all__ = ["PHI_SERIES_TOL", "phi_terms", "phi_ad", "phi_ad_vjp", "phi_ad_reference", "phi_ad_vjp_reference",
           "PhiSaved"]

PHI_SERIES_TOL = 1e-17


def phi_terms(a: float, tol: float = PHI_SERIES_TOL, kmax: int = 60) -> int:
    """The fewest Taylor terms K of phi with remainder sum_{n>K} a^n/(n+1)! <=
    a^(K+1)/(K+2)! / (1 - a/(K+3)) below ``tol`` for ||A|| <= a (at most ``kmax``)."""
    a = float(a)
    if not math.isfinite(a):
        raise ValueError(f"phi(ad X): the norm of ad X is {a}; the input has NaN/Inf entries")
    term = a / 2.0                                          # a^(K+1)/(K+2)! at K = 0
    for K in range(1, kmax + 1):
        term *= a / (K + 2)
        if a < K + 3 and term / (1.0 - a / (K + 3)) < tol:
            return K
    return kmax


@dataclass(frozen=True)
class PhiSaved:
    """What :func:`phi_ad_vjp` needs besides A: the number of terms K and, for the reference,
    the Horner intermediates ``P[j] = P_{j+2}`` of (D2) (None where the adjoint recomputes them)."""
    terms: int
    P: list | None = None


def _terms_of(A, terms):
    if terms is not None:
        return int(terms)
    xp = namespace(A)
    a = float(xp.max(xp.sqrt(xp.sum(A * A, axis=(-2, -1))))) if A.size else 0.0
    return phi_terms(a)


def _check(A, what):
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{what}: expected a stack of square matrices (..., n, n), got shape {tuple(A.shape)}")


def phi_ad_reference(A, terms: int | None = None):
    """(phi(A), :class:`PhiSaved`) by (D2) with ``xp.matmul`` (the oracle)."""
    _check(A, "phi_ad")
    xp = namespace(A)
    K = _terms_of(A, terms)
    n = A.shape[-1]
    eye = xp.eye(n, dtype=A.dtype)
    P = xp.broadcast_to(eye, A.shape)
    saved = [P]
    for k in range(K, 0, -1):
        P = eye - (A @ P) / (k + 1)
        saved.append(P)
    saved.pop()                     # P_1 = phi itself
    return P, PhiSaved(K, saved[::-1])


def phi_ad_vjp_reference(A, saved: PhiSaved, phi_bar):
    """Cotangent of A from that of phi(A) by (D3)."""
    xp = namespace(A)
    P = saved.P if saved.P is not None else phi_ad_reference(A, saved.terms)[1].P
    At = xp.matrix_transpose(A)
    A_bar = xp.zeros_like(A)
    Pb = phi_bar
    for k in range(1, saved.terms + 1):
        A_bar = A_bar - (Pb @ xp.matrix_transpose(P[k - 1])) / (k + 1)
        Pb = -(At @ Pb) / (k + 1)
    return A_bar


def _compiled(A):
    xp = namespace(A)
    impl = implementation(xp)
    if impl not in ("numba", "cupy") or A.dtype != xp.float64:
        return None
    if impl == "cupy":
        from . import _cupy_exp
        return _cupy_exp
    from . import _numba_dexp
    return _numba_dexp


def phi_ad(A, terms: int | None = None):
    """(phi(A), saved) of (D1) for real stacks ``(..., n, n)``; K = ``terms`` or (None)
    :func:`phi_terms` of the largest norm in the stack. ``saved`` goes to :func:`phi_ad_vjp`."""
    _check(A, "phi_ad")
    fast = _compiled(A)
    if fast is None:
        return phi_ad_reference(A, terms)
    K = _terms_of(A, terms)
    phi = fast.phi_ad(A, K)
    if phi is None:
        return phi_ad_reference(A, K)
    return phi, PhiSaved(K)


def phi_ad_vjp(A, saved: PhiSaved, phi_bar):
    """Cotangent of A (same shape) from that of phi(A), ``saved`` from :func:`phi_ad`."""
    fast = _compiled(A)
    A_bar = None
    if fast is not None and phi_bar.dtype == A.dtype and tuple(phi_bar.shape) == tuple(A.shape):
        A_bar = fast.phi_ad_vjp(A, saved.terms, phi_bar)
    return phi_ad_vjp_reference(A, saved, phi_bar) if A_bar is None else A_bar
