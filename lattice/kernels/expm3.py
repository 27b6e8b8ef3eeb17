"""Matrix exponential of stacked 3x3 matrices (HMC link updates, residual and mask flows).

:func:`expm` has the contract of :func:`lattice.su_n.expm` (the array-API reference, any N):
exp(X) for stacks ``(..., N, N)`` of moderate norm by the Cayley-Hamilton power series with
scaling and squaring. For N = 3 on NumPy arrays the compiled path runs the same algorithm per
matrix with everything in registers (on CuPy arrays one CUDA thread per matrix,
:mod:`lattice.kernels._cupy_exp`):

* s = ceil(log2 ||X||_F) (0 if ||X||_F <= 1) per matrix, Y = X / 2^s;            (X1)
* t_k = tr Y^k (k = 1, 2, 3), e_1 = t_1, e_2 = (e_1 t_1 - t_2)/2,
  e_3 = (e_2 t_1 - e_1 t_2 + t_3)/3, so that Y^3 = e_1 Y^2 - e_2 Y + e_3;        (X2)
* exp(Y) = c_0 + c_1 Y + c_2 Y^2 with c_k = sum_{n <= terms} a_{n,k}/n!, where
  (a_{n+1,0}, a_{n+1,1}, a_{n+1,2}) = (e_3 a_{n,2}, a_{n,0} - e_2 a_{n,2}, a_{n,1} + e_1 a_{n,2}),
  a_0 = (1, 0, 0);                                                                  (X3)
* exp(X) = exp(Y)^(2^s) by s squarings.                                            (X4)

The reference takes one s for the whole stack (its largest norm); per-matrix s differs only by
rounding. The derivative map of exp, phi(ad X) as a matrix per link, is
:func:`lattice.kernels.phi_ad` (:mod:`lattice.kernels.dexp`).
"""
from __future__ import annotations

from ..backend import namespace
from .dispatch import implementation

__all__ = ["expm", "LARGEST_ENTRY", "check_entries"]

LARGEST_ENTRY = 1e150
"""The compiled paths refuse entries of at least this modulus (and NaN/inf): ||X||_F^2, from
which the scaling s of (X1) is taken, would overflow."""


def check_entries(x, xp):
    """``ValueError`` unless every entry of ``x`` is finite and of modulus < ``LARGEST_ENTRY``
    (the compiled paths' input check; one pass over x)."""
    big = float(xp.max(xp.abs(x))) if x.size else 0.0
    if not big < LARGEST_ENTRY:
        raise ValueError(f"expm: input contains NaN or inf, or an entry of modulus {big:.3g} (>= {LARGEST_ENTRY:g}: "
                         f"its norm overflows the scaling step)")


def expm(X, terms: int = 18):
    """exp(X) for stacks ``(..., N, N)``; see the module docstring. Raises ``ValueError`` on
    NaN or inf input (both paths) and, on the compiled paths, on entries of modulus >=
    ``LARGEST_ENTRY``."""
    xp = namespace(X)
    impl = implementation(xp)
    if X.ndim >= 2 and X.shape[-1] == 3 and X.shape[-2] == 3 and impl in ("numba", "cupy"):
        if impl == "cupy":
            from . import _cupy_exp as fast
        else:
            from . import _numba_expm as fast
        E = fast.expm3(X, int(terms))
        if E is not None:
            return E
    from ..su_n import expm_reference
    return expm_reference(X, terms)
