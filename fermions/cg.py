"""Conjugate gradient for Hermitian positive-definite lattice operators (the one CG of the project).

    x, info = cg(apply_A, b, tol=1e-10, maxiter=10000, x0=None, layout=None)

solves A x = b for a batch of right-hand sides b of shape ``(*batch, *sites, *inner)``
(spinors: ``inner = 2`` trailing axes (4, N)). Every batch element has its own alpha and beta;
converged elements are frozen while the others continue.

Stopping rule: the *true* relative residual ||b - A x|| / ||b|| <= tol for every batch element.
The iteration runs on the recursively updated residual; when that satisfies the tolerance the
true residual is computed, and if rounding has made them drift apart CG restarts from the
true residual (a reliable update), so the returned info always reports the true residual.

Reductions go through ``layout.sum(..., inner)``, which is bit-reproducible for every MPI
decomposition, so CG iterates (and solutions) are identical on any number of ranks.

Mixed precision (optional): with ``apply_A_low`` (the same operator in complex64) the solve
is a defect correction: the float64 residual r = b - A x is solved in complex64 to the
relative tolerance max(2e-6, min(low_tol, tol / (2 ||r|| / ||b||))) and x += d in float64,
until the float64 true residual meets ``tol`` (typically two or three outer steps).

Non-convergence is never silent: by default :class:`CGNotConverged` is raised with the
residual reached; with ``on_failure="warn"`` a :class:`CGWarning` is issued and the caller
must check ``info.converged``.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

from lattice.backend import namespace, to_host
from lattice.layout import layout_for

__all__ = ["cg", "check_cg_args", "CGInfo", "CGNotConverged", "CGWarning", "CGBreakdown", "DEFAULT_MAXITER"]

DEFAULT_MAXITER = 10000


class CGNotConverged(RuntimeError):
    """CG stopped (maxiter) before the true relative residual reached the tolerance."""

    def __init__(self, message, info=None):
        super().__init__(message)
        self.info = info


class CGBreakdown(ArithmeticError):
    """p^dag A p <= 0 or not finite: the operator is not Hermitian positive definite (or NaN)."""


class CGWarning(RuntimeWarning):
    """Issued instead of raising when ``on_failure="warn"``."""


@dataclass
class CGInfo:
    """What a CG solve did.

    iterations : operator applications in the iteration (the inner ones for mixed precision).
    residual : worst true relative residual ||b - A x|| / ||b|| over the batch (float).
    residuals : per batch element (tuple of floats, batch order flattened).
    converged : every batch element reached ``tol``.
    restarts : reliable updates (restarts from the true residual) or defect-correction steps.
    """
    iterations: int
    residual: float
    residuals: tuple
    converged: bool
    tol: float
    restarts: int = 0
    seconds: float = 0.0
    precision: str = "double"
    low_iterations: int = 0
    extra: dict = field(default_factory=dict)


def _sum(layout, x, inner):
    """Reproducible global sum per batch element, float64/complex128 accumulation."""
    xp = namespace(x)
    if x.dtype == xp.float32:
        x = xp.astype(x, xp.float64)
    elif x.dtype == xp.complex64:
        x = xp.astype(x, xp.complex128)
    return layout.sum(x, inner=inner)


def _norm2(layout, x, inner):
    xp = namespace(x)
    return _sum(layout, xp.real(x * xp.conj(x)), inner)


def _rdot(layout, x, y, inner):
    """Re <x, y> per batch element."""
    xp = namespace(x, y)
    return _sum(layout, xp.real(xp.conj(x) * y), inner)


def _expand(c, ref, dtype):
    xp = namespace(ref)
    c = xp.astype(c, dtype) if c.dtype != dtype else c
    return xp.reshape(c, tuple(c.shape) + (1,) * (ref.ndim - c.ndim))


def _fmt_batch(v):
    v = [float(a) for a in v]
    return ", ".join(f"{a:.3e}" for a in v[:8]) + (" ..." if len(v) > 8 else "")


def _cg_core(apply_A, b, tol, maxiter, x0, layout, inner, bnorm2=None):
    """Plain CG with reliable restarts. Returns x, true relative residuals (array), its, restarts."""
    xp = namespace(b)
    nb2 = _norm2(layout, b, inner) if bnorm2 is None else bnorm2
    zero_b = nb2 == 0
    nb2_safe = xp.where(zero_b, xp.ones_like(nb2), nb2)
    target = (tol * tol) * nb2_safe
    if x0 is None:
        x = xp.zeros_like(b)
        r = b
    else:
        x = x0
        r = b - apply_A(x)
    rr = _norm2(layout, r, inner)
    p = r
    its = 0
    restarts = 0
    while True:
        active = (rr > target) & ~zero_b
        while bool(xp.any(active)) and its < maxiter:
            Ap = apply_A(p)
            its += 1
            pAp = _rdot(layout, p, Ap, inner)
            bad = active & ~(pAp > 0)
            if bool(xp.any(bad)):
                raise CGBreakdown(
                    f"CG breakdown after {its} iterations: p^dag A p = {_fmt_batch(to_host(pAp))} is not positive "
                    f"(the operator is not Hermitian positive definite, or the field contains NaN)")
            alpha = xp.where(active, rr / xp.where(active, pAp, xp.ones_like(pAp)), xp.zeros_like(rr))
            a = _expand(alpha, b, b.dtype)
            x = x + a * p
            r = r - a * Ap
            rr_new = _norm2(layout, r, inner)
            beta = xp.where(active, rr_new / xp.where(active, rr, xp.ones_like(rr)), xp.zeros_like(rr))
            p = r + _expand(beta, b, b.dtype) * p
            rr = rr_new
            active = (rr > target) & ~zero_b
        # true residual
        r_true = b - apply_A(x)
        rr_true = _norm2(layout, r_true, inner)
        ok = (rr_true <= target) | zero_b
        if bool(xp.all(ok)) or its >= maxiter or restarts >= 50:
            rel = xp.sqrt(rr_true / nb2_safe)
            rel = xp.where(zero_b, xp.zeros_like(rel), rel)
            return x, rel, its, restarts
        # reliable update: restart from the true residual
        restarts += 1
        r = r_true
        rr = rr_true
        p = r


def check_cg_args(tol, maxiter, on_failure) -> int:
    """Validate the CG settings; returns maxiter as an int (None -> :data:`DEFAULT_MAXITER`)."""
    if on_failure not in ("raise", "warn"):
        raise ValueError(f"on_failure must be 'raise' or 'warn', got {on_failure!r}")
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    maxiter = DEFAULT_MAXITER if maxiter is None else int(maxiter)
    if maxiter < 1:
        raise ValueError(f"maxiter must be >= 1, got {maxiter}")
    return maxiter


def cg(apply_A, b, tol: float = 1e-10, maxiter: int | None = None, x0=None, layout=None, *,
       inner: int = 2, on_failure: str = "raise", apply_A_low=None, low_tol: float = 1e-5,
       low_maxiter: int | None = None, low_dtype=None, what: str = "CG"):
    """Solve A x = b (A Hermitian positive definite) to a true relative residual ``tol``.

    Parameters
    ----------
    apply_A : callable mapping a field like ``b`` to A applied to it (batched).
    b : right-hand sides, shape ``(*batch, *sites, *inner)``.
    tol : true relative residual ||b - A x|| / ||b|| required for every batch element.
    maxiter : maximum operator applications (default :data:`DEFAULT_MAXITER`).
    x0 : initial guess (default zero).
    layout : the layout of the field's sites (default: inferred for a single process; for
        packed even-odd fields pass the half-lattice layout under MPI).
    inner : number of trailing per-site axes (2 for spinors).
    on_failure : "raise" (default, :class:`CGNotConverged`) or "warn" (:class:`CGWarning`;
        check ``info.converged``).
    apply_A_low, low_tol : optional complex64 operator for mixed-precision defect correction.
    low_maxiter : iteration cap of each low-precision solve (default: what is left of ``maxiter``).
    low_dtype : dtype of the low-precision residual (default complex64, float32 for a real ``b``);
        ``apply_A_low`` must act on it.
    what : name used in error messages.

    Returns
    -------
    (x, info) with info a :class:`CGInfo`.
    """
    maxiter = check_cg_args(tol, maxiter, on_failure)
    xp = namespace(b)
    if not xp.isdtype(b.dtype, "complex floating") and not xp.isdtype(b.dtype, "real floating"):
        raise TypeError(f"{what}: right-hand side must be a floating-point array, got {b.dtype}")
    layout = layout_for(b, 4, inner, layout)
    if not bool(xp.all(xp.isfinite(b))):
        raise ValueError(f"{what}: the right-hand side contains NaN or inf")
    t0 = time.perf_counter()
    if apply_A_low is None:
        x, rel, its, restarts = _cg_core(apply_A, b, tol, maxiter, x0, layout, inner)
        low_its = 0
        precision = "double"
    else:
        x, rel, its, restarts, low_its = _defect_correction(apply_A, apply_A_low, b, tol, maxiter, x0,
                                                            layout, inner, low_tol, low_maxiter, low_dtype)
        precision = "mixed"
    rel_h = [float(v) for v in to_host(xp.reshape(rel, (-1,)))]
    worst = max(rel_h) if rel_h else 0.0
    converged = all(v <= tol for v in rel_h)
    info = CGInfo(iterations=its, residual=worst, residuals=tuple(rel_h), converged=converged, tol=tol,
                  restarts=restarts, seconds=time.perf_counter() - t0, precision=precision,
                  low_iterations=low_its)
    if not converged:
        bad = [i for i, v in enumerate(rel_h) if v > tol]
        msg = (f"{what} did not converge: true relative residual {worst:.3e} > tol {tol:.1e} after "
               f"{its} iterations (maxiter {maxiter}); {len(bad)} of {len(rel_h)} right-hand sides failed "
               f"(first: batch index {bad[0]}, residuals {_fmt_batch([rel_h[i] for i in bad])})")
        if not all(math.isfinite(v) for v in rel_h):
            msg += "; the residual is not finite (NaN/inf in the operator or the source)"
        if on_failure == "raise":
            raise CGNotConverged(msg, info)
        warnings.warn(msg, CGWarning, stacklevel=2)
    return x, info


def _defect_correction(apply_A, apply_A_low, b, tol, maxiter, x0, layout, inner, low_tol, low_maxiter=None,
                       low_dtype=None):
    """float64 outer loop, complex64 (or float32) inner CG."""
    xp = namespace(b)
    if low_dtype is not None:
        low = low_dtype
    else:
        low = xp.complex64 if xp.isdtype(b.dtype, "complex floating") else xp.float32
    nb2 = _norm2(layout, b, inner)
    zero_b = nb2 == 0
    nb2_safe = xp.where(zero_b, xp.ones_like(nb2), nb2)
    x = xp.zeros_like(b) if x0 is None else x0
    r = b if x0 is None else b - apply_A(x)
    its = low_its = steps = 0
    floor = 2e-6            # what a complex64 CG can reliably reach
    while True:
        rr = _norm2(layout, r, inner)
        rel = xp.sqrt(rr / nb2_safe)
        rel = xp.where(zero_b, xp.zeros_like(rel), rel)
        done = (rel <= tol) | zero_b
        if bool(xp.all(done)) or its >= maxiter or steps >= 200:
            return x, rel, its, steps, low_its
        # inner tolerance: at most low_tol per step, but no tighter than this step needs
        # (0.5 tol / current residual of the worst element), and not below the single-precision floor
        worst = float(xp.max(xp.where(done, xp.zeros_like(rel), rel)))
        ltol = max(floor, min(float(low_tol), 0.5 * tol / worst))
        rl = xp.astype(r, low)
        budget = maxiter - its if low_maxiter is None else min(int(low_maxiter), maxiter - its)
        d, rel_low, k, _ = _cg_core(apply_A_low, rl, ltol, budget, None, layout, inner)
        its += k
        low_its += k
        steps += 1
        dmask = _expand(xp.astype(~done, b.dtype), b, b.dtype)
        x = x + dmask * xp.astype(d, b.dtype)
        r = b - apply_A(x)
        its += 1
