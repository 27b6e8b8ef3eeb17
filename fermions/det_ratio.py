"""Stochastic estimator of the Nf=2 determinant ratio det K(U') / det K(U), K = M^dag M^,
with an optional invertible pseudofermion map h (the conditional flow of the paper's section 3).

Since det M = det M_ee det M^ with det M_ee independent of U (:mod:`fermions.twisted_mass`),
the Nf = 2 ratio det(M^dag M[U'])/det(M^dag M[U]) equals det K(U')/det K(U) with
K(U) = M^(U)^dag M^(U) on the odd sites (n = 2 N V complex components).

Derivation (docs/design.md §6). For eta complex Gaussian on the odd sites, density
pi^{-n} exp(-|eta|^2) (E|eta_i|^2 = 1), the pseudofermion phi = M^(U)^dag eta has density

    p(phi | U) = pi^{-n} exp(-phi^dag K(U)^{-1} phi) / det K(U),                      (P1)

because |M^^{-dag} phi|^2 = phi^dag (M^^dag M^)^{-1} phi. Normalisation of (P1) at U' gives
det K(U') = int d^{2n}phi' pi^{-n} exp(-phi'^dag K(U')^{-1} phi'). Substitute phi' = h(phi)
for any invertible (real-differentiable) map h, with real Jacobian J = |det_R d phi'/d phi|,
and multiply and divide by p(phi | U):

    det K(U') / det K(U) = E_eta[ w ],
    log w = -phi'^dag K(U')^{-1} phi' + |eta|^2 + log J,   phi = M^(U)^dag eta, phi' = h(phi).   (P2)

(phi^dag K(U)^{-1} phi = |eta|^2 exactly, so no solve on U is needed.) h = identity is the
plain estimator; the map h* = M^(U')^dag M^(U)^{-dag} gives phi' = M^(U')^dag eta, log J =
log det K(U') - log det K(U) (det_R of a complex-linear A is |det A|^2) and hence zero
variance: log w = log det K(U')/det K(U) for every eta. h* hops through both U and U', which is
why a learned h transports with both fields (:mod:`flows.pseudofermion`).

With h = identity, log w = |eta|^2 - |B eta|^2 with B = M^(U')^{-dag} M^(U)^dag. The
estimator has finite variance only if E[w^2] = det(2 B^dag B - 1)^{-1} exists, i.e. only if
**B^dag B > 1/2** (every singular value of B above 1/sqrt 2; :func:`ratio_variance_condition`).
That holds for U' close to U and fails for distant configurations: then the per-shot
log-weights scatter widely and log W is dominated by rare shots. (Z_2 noise is biased for this
estimator; do not use it.)

Accuracy. Each exponent is a difference of two numbers of size ~n (~5e5 at 12^3 x 24). With
zeta from CG on K' = M^(U')^dag M^(U'), K' zeta = phi', we use the *energy functional*

    phi'^dag K'^{-1} phi'  ~=  2 Re <phi', zeta> - |M^(U') zeta|^2,

whose error is -<r, K'^{-1} r> <= 0 for the CG residual r: quadratic in the residual
(<= tol^2 |phi'|^2 / lambda_min(K'), ~1e-10 at the paper's parameters with tol = 1e-10), where
|M^'^{-dag} phi'|^2 would carry a first-order error. The per-site terms are combined before
the (float64, decomposition-independent) global sum.

Results are log-weights, never weights: log W = log-mean-exp(log w_k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lattice.backend import Rng, namespace
from lattice.layout import Layout, infer_gauge_layout

from .twisted_mass import TwistedMassWilson
from .cg import CGInfo
from .solvers import LinearMap, resolve_solver
from .evenodd import require_even_odd

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

    log_weights : float64 (n_shots, *batch): log w_k of (P2), |eta_k|^2 - phi_k'^dag K(U')^{-1} phi_k' + log J_k.
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
                  precision: str = "double", on_failure: str = "raise", pf_map=None) -> DetRatio:
    """Stochastic estimate of log[det(M^dag M[U']) / det(M^dag M[U])] with ``n_shots`` noise vectors.

    Parameters
    ----------
    U, U_prime : gauge fields of the same shape (*batch, 4, L0..L3, N, N).
    kappa, mu : twisted-mass parameters (same for both).
    n_shots : number of complex Gaussian noise vectors per batch element.
    seed : noise seed (the noise is independent of the MPI decomposition; the same seed gives
        the same eta with or without ``pf_map``, so the two estimates are correlated).
    tol : true relative CG residual (default 1e-10; see the module docstring on accuracy).
    precision : "double" or "mixed" (complex64 inner CG with float64 defect correction).
    pf_map : the pseudofermion map h of (P2), a callable phi -> (phi', log J) on packed odd
        spinors (n_shots, *batch, L0/2, L1, L2, L3, 4, N), log J real of shape broadcastable to
        (n_shots, *batch) (e.g. :meth:`flows.PseudofermionFlow.bind`); None is the identity.

    Returns a :class:`DetRatio` (per-shot log-weights, log W, its error, the CG info).

    Needs the even-odd packing: every extent even and L_0 >= 4 (the smallest lattice is
    (4, 2, 2, 2)); :class:`fermions.EvenOddError` otherwise.
    """
    n_shots = int(n_shots)
    if n_shots < 1:
        raise ValueError(f"n_shots must be >= 1, got {n_shots}")
    if tuple(U.shape) != tuple(U_prime.shape):
        raise ValueError(f"U and U_prime must have the same shape, got {tuple(U.shape)} and {tuple(U_prime.shape)}")
    layout = infer_gauge_layout(U, layout)
    require_even_odd(layout, "log_det_ratio")
    xp = namespace(U, U_prime)
    op = TwistedMassWilson(U, kappa, mu, layout=layout, bc=bc)
    opp = TwistedMassWilson(U_prime, kappa, mu, layout=layout, bc=bc)
    half = op.half_layout
    batch = tuple(U.shape[: U.ndim - 7])
    eta = xp.astype(draw_odd_noise(Rng(seed, xp=xp), half, (n_shots,) + batch, op.N), op.dtype)
    phi = op.apply_schur_dagger(eta)                                    # phi = M^(U)^dag eta, (P1)
    log_jac = 0.0
    if pf_map is not None:
        phi, log_jac = pf_map(phi)
        if tuple(phi.shape) != tuple(eta.shape):
            raise ValueError(f"pf_map returned phi' of shape {tuple(phi.shape)}, expected {tuple(eta.shape)}")
    solver = resolve_solver(tol=tol, maxiter=maxiter, on_failure=on_failure, precision=precision)
    zeta, info = solver.solve(LinearMap(opp, "apply_schur_normal"), phi, layout=half,
                              what="CG on M^'^dag M^' (determinant ratio)")
    y = opp.apply_schur(zeta)
    # log w = |eta|^2 - (2 Re<phi', zeta> - |M^' zeta|^2) + log J, combined per site before the sum
    dens = (xp.real(eta * xp.conj(eta)) - 2.0 * xp.real(xp.conj(phi) * zeta) + xp.real(y * xp.conj(y)))
    logw = half.sum(xp.astype(dens, xp.float64), inner=2) + log_jac          # (n_shots, *batch)
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
              "pf_map": "identity" if pf_map is None else str(getattr(pf_map, "name", type(pf_map).__name__)),
              "estimator": "complex Gaussian noise on odd sites, phi = Mhat[U]^dag eta, phi' = h(phi), "
                           "w = exp(|eta|^2 - phi'^dag K[U']^-1 phi') J, K = Mhat^dag Mhat"}
    return DetRatio(log_weights=logw, log_W=logW, log_W_err=err, cg=info, params=params)


def _dag(A):
    xp = namespace(A)
    return xp.conj(xp.matrix_transpose(A))


def ratio_variance_condition(U, U_prime, kappa: float, mu: float, layout: Layout | None = None,
                             bc="antiperiodic", pf_map=None, seed: int = 0) -> object:
    """lambda_min(B^dag B) for B = M^[U']^{-dag} H M^[U]^dag from dense matrices (small lattices only).

    H is the matrix of the pseudofermion map, phi' = H phi: the identity without ``pf_map``;
    with one, built column by column from ``pf_map`` (the callable of :func:`log_det_ratio`,
    e.g. :meth:`flows.PseudofermionFlow.bind`), which must be complex-linear (checked on random
    vectors drawn from ``seed``; a ValueError otherwise). For such a map, log w = |eta|^2 -
    |B eta|^2 + log|det H|^2 and E[w^2] = |det H|^4 / det(2 B^dag B - 1): the stochastic ratio has
    finite variance iff this exceeds 1/2. Returns one value per batch element. Needs the
    even-odd packing (every extent even, L_0 >= 4).
    """
    from .dense import dense_schur, dense_matrix
    require_even_odd(infer_gauge_layout(U, layout), "ratio_variance_condition")
    xp = namespace(U)
    S = dense_schur(U, kappa, mu, layout=layout, bc=bc)
    Sp = dense_schur(U_prime, kappa, mu, layout=layout, bc=bc)
    HSd = _dag(S)
    if pf_map is not None:
        batch = tuple(S.shape[:-2])
        op = TwistedMassWilson(U, kappa, mu, layout=layout, bc=bc)
        fs = tuple(op.half_layout.local_shape) + (4, op.N)

        def h(phi):
            return pf_map(xp.broadcast_to(phi, (phi.shape[0],) + batch + fs))[0]
        _require_linear(h, (1,) + batch + fs, xp, S.dtype, seed)
        HSd = dense_matrix(h, fs, batch, xp, S.dtype) @ HSd
    B = xp.linalg.solve(_dag(Sp), HSd)
    s = xp.linalg.svdvals(B)
    return xp.min(s, axis=-1) ** 2


def _require_linear(h, shape, xp, dtype, seed):
    """Raise unless h(a x + b y) = a h(x) + b h(y) (complex a, b) to 1e-10 on random x, y."""
    r = Rng(seed, xp=xp)
    x, y = (xp.astype(r.complex_normal(lead=shape[:1], inner=shape[1:]), dtype) for _ in range(2))
    a, b = 0.6 - 0.8j, -0.3 + 1.1j
    lhs, rhs = h(a * x + b * y), a * h(x) + b * h(y)
    scale = float(xp.max(xp.abs(rhs))) or 1.0
    err = float(xp.max(xp.abs(lhs - rhs))) / scale
    if not err <= 1e-10:
        raise ValueError(f"ratio_variance_condition: pf_map is not complex-linear (|h(ax + by) - a h(x) - b h(y)| "
                         f"= {err:.1e} of |h|); the condition B^dag B > 1/2 holds for linear maps only -- "
                         f"estimate the variance from the per-shot log-weights of log_det_ratio instead")
