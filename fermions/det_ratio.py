"""Stochastic estimator of the Nf=2 determinant ratio det(M^dag M[U']) / det(M^dag M[U]).

Since det M = det M_ee det M^ with det M_ee independent of U (:mod:`fermions.twisted_mass`),

    R = det(M^dag M^[U']) / det(M^dag M^[U]) = 1 / det(B^dag B),    B = M^[U']^{-1} M^[U],

and for complex Gaussian noise eta on the odd sites with density pi^{-n} exp(-|eta|^2)
(E|eta_i|^2 = 1, n = 2 N V spin-colour-site components)

    R = E[ w ],   w = exp(-|B eta|^2 + |eta|^2)      (docs/design.md §6).

The estimator has finite variance only if E[w^2] = det(2 B^dag B - 1)^{-1} exists, i.e. only if
**B^dag B > 1/2** (every singular value of B above 1/sqrt 2). That holds for U' close to U
and fails for distant configurations: then the per-shot log-weights scatter widely and log W
is dominated by rare shots. (Z_2 noise is biased for this estimator; do not use it.)

Accuracy. Each exponent -|B eta|^2 + |eta|^2 is a difference of two numbers of size ~n
(~5e5 at 12^3 x 24). With chi = M^[U] eta and zeta from CG on A = M^[U'] M^[U']^dag,
A zeta = chi, we use the *energy functional*

    |B eta|^2 = chi^dag A^{-1} chi  ~=  2 Re <chi, zeta> - <zeta, A zeta>,

whose error is -<r, A^{-1} r> <= 0 for the CG residual r: quadratic in the residual
(<= tol^2 |chi|^2 / lambda_min(A), ~1e-10 at the paper's parameters with tol = 1e-10), where
|M^'^{-1} chi|^2 would carry a first-order error. The per-site terms are combined before
the (float64, decomposition-independent) global sum.

Results are log-weights, never weights: log W = log-mean-exp(log w_k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lattice.backend import Rng, namespace
from lattice.layout import Layout, infer_gauge_layout

from .twisted_mass import TwistedMassWilson
from .cg import cg, CGInfo

__all__ = ["log_det_ratio", "DetRatio", "log_mean_exp", "ratio_variance_condition", "draw_odd_noise"]


def log_mean_exp(logw, axis: int = 0):
    """log(mean(exp(logw))) along ``axis``, stably (float64)."""
    xp = namespace(logw)
    m = xp.max(logw, axis=axis, keepdims=True)
    s = xp.mean(xp.exp(logw - m), axis=axis, keepdims=True)
    return xp.squeeze(m + xp.log(s), axis=axis)


@dataclass
class DetRatio:
    """Result of :func:`log_det_ratio`.

    log_weights : float64 (n_shots, *batch): log w_k = |eta_k|^2 - |B eta_k|^2.
    log_W : float64 (*batch): log of the estimate of det(M^dag M[U'])/det(M^dag M[U]).
    log_W_err : float64 (*batch): standard error of log_W (delta method, std(w)/(sqrt(n) mean w)).
    cg : CG info of the solve (all shots and batch elements in one batched solve).
    params : the parameters (kappa, mu, bc, n_shots, seed, tol).
    """
    log_weights: object
    log_W: object
    log_W_err: object
    cg: CGInfo
    params: dict


def draw_odd_noise(rng: Rng, half: Layout, lead, N: int):
    """Complex Gaussian noise (E|eta|^2 = 1) on the packed odd sites, (*lead, *half_sites, 4, N)."""
    return rng.complex_normal(lead=tuple(lead), layout=half, inner=(4, N))


def log_det_ratio(U, U_prime, kappa: float, mu: float, n_shots: int, seed: int, tol: float = 1e-10,
                  maxiter: int | None = None, layout: Layout | None = None, bc="antiperiodic",
                  precision: str = "double", on_failure: str = "raise") -> DetRatio:
    """Stochastic estimate of log[det(M^dag M[U']) / det(M^dag M[U])] with ``n_shots`` noise vectors.

    Parameters
    ----------
    U, U_prime : gauge fields of the same shape (*batch, 4, L0..L3, N, N).
    kappa, mu : twisted-mass parameters (same for both).
    n_shots : number of complex Gaussian noise vectors per batch element.
    seed : noise seed (the noise is independent of the MPI decomposition).
    tol : true relative CG residual (default 1e-10; see the module docstring on accuracy).
    precision : "double" or "mixed" (complex64 inner CG with float64 defect correction).

    Returns a :class:`DetRatio` (per-shot log-weights, log W, its error, the CG info).
    """
    n_shots = int(n_shots)
    if n_shots < 1:
        raise ValueError(f"n_shots must be >= 1, got {n_shots}")
    if tuple(U.shape) != tuple(U_prime.shape):
        raise ValueError(f"U and U_prime must have the same shape, got {tuple(U.shape)} and {tuple(U_prime.shape)}")
    layout = infer_gauge_layout(U, layout)
    xp = namespace(U, U_prime)
    op = TwistedMassWilson(U, kappa, mu, layout=layout, bc=bc)
    opp = TwistedMassWilson(U_prime, kappa, mu, layout=layout, bc=bc)
    half = op.half_layout
    batch = tuple(U.shape[: U.ndim - 7])
    eta = xp.astype(draw_odd_noise(Rng(seed, xp=xp), half, (n_shots,) + batch, op.N), op.dtype)
    chi = op.apply_schur(eta)
    kw = {}
    if precision == "mixed":
        kw["apply_A_low"] = opp.astype(xp.complex64).apply_schur_mmdag
    elif precision != "double":
        raise ValueError(f"precision must be 'double' or 'mixed', got {precision!r}")
    zeta, info = cg(opp.apply_schur_mmdag, chi, tol=tol, maxiter=maxiter, layout=half, on_failure=on_failure,
                    what="CG on M^' M^'^dag (determinant ratio)", **kw)
    y = opp.apply_schur_dagger(zeta)
    # log w = |eta|^2 - (2 Re<chi, zeta> - |M^'^dag zeta|^2), combined per site before the sum
    dens = (xp.real(eta * xp.conj(eta)) - 2.0 * xp.real(xp.conj(chi) * zeta) + xp.real(y * xp.conj(y)))
    logw = half.sum(xp.astype(dens, xp.float64), inner=2)            # (n_shots, *batch)
    logW = log_mean_exp(logw, axis=0)
    # delta-method error of log mean w
    w = xp.exp(logw - xp.max(logw, axis=0, keepdims=True))
    mw = xp.mean(w, axis=0)
    if n_shots > 1:
        sw = xp.std(w, axis=0, correction=1)
        err = sw / (math.sqrt(n_shots) * mw)
    else:
        err = xp.full_like(mw, float("nan"))
    params = {"kappa": float(kappa), "mu": float(mu), "bc": [str(b) for b in op.bc], "n_shots": n_shots,
              "seed": int(seed), "tol": float(tol), "precision": precision,
              "estimator": "complex Gaussian noise on odd sites, w = exp(|eta|^2 - |B eta|^2), "
                           "B = Mhat[U']^-1 Mhat[U]"}
    return DetRatio(log_weights=logw, log_W=logW, log_W_err=err, cg=info, params=params)


def ratio_variance_condition(U, U_prime, kappa: float, mu: float, layout: Layout | None = None,
                             bc="antiperiodic") -> object:
    """lambda_min(B^dag B) for B = M^[U']^{-1} M^[U] from dense matrices (small lattices only).

    The stochastic ratio has finite variance iff this exceeds 1/2.
    """
    from .dense import dense_schur
    xp = namespace(U)
    S = dense_schur(U, kappa, mu, layout=layout, bc=bc)
    Sp = dense_schur(U_prime, kappa, mu, layout=layout, bc=bc)
    B = xp.linalg.solve(Sp, S)
    s = xp.linalg.svdvals(B)
    return xp.min(s, axis=-1) ** 2

