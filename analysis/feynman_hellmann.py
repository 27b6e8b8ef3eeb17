"""Feynman–Hellmann derivatives and the gluon momentum fraction (paper eqs. 12–17).

The action is deformed as S_λ = S + λ O (eq. 14) with O the lattice-summed operator of
eq. 16, so p_{λ+ε} ∝ p_λ e^{-ε O}. Three estimators of dM/dλ are provided, all by
correlated fits of the hadron mass inside ONE jackknife (the same deleted bin for every
piece of a method), so that correlated fluctuations cancel in the difference:

``method="flow"`` — correlated ensembles (eqs. 12–13). Correlators C(U) measured on U ~ p_λ₁
    and C(f(U)) on the flowed configurations with log-weights log w(f(U)) =
    log p_λ₂(f(U)) - log q(f(U)) (unnormalised). Then

        ⟨C⟩_λ₂ = ⟨w · C∘f⟩_λ₁ / ⟨w⟩_λ₁,
        dM/dλ ≈ [M(λ₂) - M(λ₁)] / (λ₂ - λ₁).

    (The paper's printed eq. 13, ⟨O(U) - w(f(U)) O(f(U))⟩_λ₁, omits both the
    1/(λ₁ - λ₂) and the normalisation by ⟨w⟩; both are included here.)

``method="epsilon"`` — ε-reweighting of the λ₁ ensemble with operator values O_i:
    with ``eps=None`` (default) the exact derivative d⟨C⟩/dλ = -⟨C O⟩ + ⟨C⟩⟨O⟩ is used and
    dM/dλ is the response of the fitted mass to it, [M(C̄ + hD) - M(C̄ - hD)]/(2h) with
    D = d⟨C⟩/dλ (a symmetric difference in the data, h small, fit covariance fixed);
    with ``eps`` given, the ensemble is reweighted by exp(-ε O) and
    dM/dλ ≈ [M(λ₁ + ε) - M(λ₁)]/ε. O is centred at its mean first (this changes neither
    estimator but avoids cancellations for a lattice-summed O).

``method="independent"`` — two independent ensembles at λ₁ and λ₂; each has its own
    jackknife and the errors add (:func:`analysis.align_ensembles`).

Gluon momentum fraction (paper's convention, eq. 17):

    ⟨x⟩_g^latt = -(2 / (3 M)) dM/dλ,   M = M(λ₁)  (the paper has λ₁ = 0),

the bare lattice quantity (no renormalisation or mixing), per jackknife replica.
With O normalised as in eq. 16 the tree-level factor is -4/(3M), not -2/(3M): the paper's
eq. 17 (kept here) gives half the tree-level-normalised bare <x>_g (docs/design.md §7.10).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .estimate import Estimate, derive, align_ensembles, format_value
from .fits import FitResult, ScanResults, fit_means, _data_cov, _window
from .resampling import jackknife, resample_means

__all__ = ["gluon_momentum_fraction", "FHResult", "FHScan", "flow_derivative", "reweighting_derivative",
           "x_g_from_slope"]

_CONVENTION = "<x>_g^latt = -(2/(3M)) dM/dlambda (paper eq. 17; bare lattice normalisation)"


def x_g_from_slope(mass, dM_dlambda):
    """⟨x⟩_g^latt = -(2/(3M)) dM/dλ (paper eq. 17), for numbers or arrays."""
    return -2.0 * np.asarray(dM_dlambda) / (3.0 * np.asarray(mass))


# ----------------------------------------------------------------------------- observable level
def flow_derivative(O_base, O_flowed, log_weights, lam1: float, lam2: float, func=None,
                    bin_size: int = 1) -> Estimate:
    """d f(⟨O⟩)/dλ ≈ [f(⟨O⟩_λ₂) - f(⟨O⟩_λ₁)]/(λ₂ - λ₁) from a flow λ₁ → λ₂ (eqs. 12–13).

    O_base (N, ...) measured on U ~ p_λ₁, O_flowed (N, ...) on f(U), log_weights (N,) the
    unnormalised log w(f(U)); ⟨O⟩_λ₂ = ⟨w O∘f⟩/⟨w⟩. One jackknife deletes the same bin from
    both averages and from Σw.
    """
    d = _dlam(lam1, lam2)
    f = (lambda x: x) if func is None else func
    return jackknife((O_base, O_flowed), func=lambda a, b: (np.asarray(f(b)) - np.asarray(f(a))) / d,
                     log_weights=(None, log_weights), bin_size=bin_size, label="dO/dlambda (flow)")


def reweighting_derivative(O, operator, func=None, eps: float | None = None, bin_size: int = 1) -> Estimate:
    """d f(⟨O⟩)/dλ from one ensemble by ε-reweighting with the action operator ``operator``.

    eps=None: exact d⟨O⟩/dλ = -⟨O·op⟩ + ⟨O⟩⟨op⟩ (chain rule through ``func`` by a symmetric
    difference in the direction of d⟨O⟩/dλ). eps given: [f(⟨O⟩_ε) - f(⟨O⟩)]/ε with
    ⟨O⟩_ε = ⟨e^{-ε op} O⟩/⟨e^{-ε op}⟩. Jackknife with numerator and denominator together.
    """
    O = np.asarray(O, dtype=np.float64)
    op = _centred_operator(operator, O.shape[0])
    f = (lambda x: np.asarray(x)) if func is None else (lambda x: np.asarray(func(x)))
    if eps is None:
        opb = op.reshape((-1,) + (1,) * (O.ndim - 1))

        def deriv(c, o, co):
            D = -(co - c * o)
            if func is None:
                return D
            h = 1e-4 * np.max(np.abs(c)) / max(np.max(np.abs(D)), 1e-300)
            return (f(c + h * D) - f(c - h * D)) / (2 * h)

        return jackknife((O, op, O * opb), func=deriv, bin_size=bin_size, label="dO/dlambda (eps, exact)")
    eps = float(eps)
    if eps == 0:
        raise ValueError("eps must be non-zero (or None for the exact derivative)")
    return jackknife((O, O), func=lambda a, b: (f(b) - f(a)) / eps, log_weights=(None, -eps * op),
                     bin_size=bin_size, label=f"dO/dlambda (eps={eps:g})")


def _dlam(lam1, lam2):
    if lam2 is None:
        raise ValueError("lam2 is required")
    d = float(lam2) - float(lam1)
    if d == 0:
        raise ValueError("lam1 and lam2 must differ")
    return d


def _centred_operator(operator, n):
    if operator is None:
        raise ValueError("method='epsilon' needs operator= (the lattice-summed O of eq. 16 per configuration)")
    op = np.asarray(operator, dtype=np.float64)
    if op.shape != (n,):
        raise ValueError(f"operator must have shape ({n},) (one value per configuration), got {op.shape}")
    if not np.all(np.isfinite(op)):
        raise ValueError("operator contains NaN or inf")
    return op - op.mean()


# ----------------------------------------------------------------------------- records
@dataclass(repr=False)
class FHResult:
    """Feynman–Hellmann result for one fit window.

    mass : M(λ₁) (Estimate); mass2 : M(λ₂) or M(λ₁+ε) (None for the exact ε-derivative);
    dM_dlambda, x_g : Estimates (x_g in the paper's eq.-17 convention);
    fits : the FitResults used (λ₁ first).
    """

    method: str
    t_min: int
    t_max: int
    T: int
    lam1: float
    lam2: float | None
    eps: float | None
    mass: Estimate
    mass2: Estimate | None
    dM_dlambda: Estimate
    x_g: Estimate
    fits: tuple
    info: dict = field(default_factory=dict)

    convention = _CONVENTION

    def summary(self) -> str:
        how = {"flow": f"flow lambda1={self.lam1:g} -> lambda2={self.lam2:g}",
               "independent": f"independent ensembles lambda1={self.lam1:g}, lambda2={self.lam2:g}",
               "epsilon": (f"epsilon-reweighting at lambda1={self.lam1:g}, "
                           + ("exact derivative" if self.eps is None else f"eps={self.eps:g}"))}[self.method]
        f0 = self.fits[0]
        lines = [f"Feynman-Hellmann ({how}); fit t = {self.t_min}..{self.t_max}, T = {self.T}, "
                 f"{f0.n_states}-state {'correlated' if f0.correlated else 'uncorrelated'}, jackknife",
                 f"  M(lambda1)   = {format_value(*self.mass)}"]
        if self.mass2 is not None:
            lines.append(f"  M(lambda2)   = {format_value(*self.mass2)}")
        lines += [f"  dM/dlambda   = {format_value(*self.dM_dlambda)}",
                  f"  <x>_g^latt   = {format_value(*self.x_g)}    [{self.convention}]",
                  "  chi2/dof     = " + ", ".join(f"{f.chi2_dof:.2f}" for f in self.fits)]
        return "\n".join(lines)

    __repr__ = summary


@dataclass(repr=False)
class FHScan(ScanResults):
    """:class:`FHResult` for each t_min (like the paper's Fig. 2)."""

    label: str = ""

    def _arr(self, name):
        return (np.array([getattr(r, name).mean for r in self.results]),
                np.array([getattr(r, name).err for r in self.results]))

    @property
    def x_g(self):
        """(means, errors) of ⟨x⟩_g^latt against t_min."""
        return self._arr("x_g")

    @property
    def dM_dlambda(self):
        return self._arr("dM_dlambda")

    @property
    def mass(self):
        return self._arr("mass")

    def summary(self) -> str:
        if not self.results:
            return "FHScan(empty)"
        r0 = self.results[0]
        lines = [f"Feynman-Hellmann t_min scan ({r0.method}{', ' + self.label if self.label else ''}), "
                 f"t_max = {r0.t_max}, T = {r0.T}; {_CONVENTION}",
                 f"  {'t_min':>5s}  {'M(lambda1)':>14s}  {'dM/dlambda':>14s}  {'<x>_g^latt':>14s}  chi2/dof"]
        for r in self.results:
            lines.append(f"  {r.t_min:5d}  {format_value(*r.mass):>14s}  {format_value(*r.dM_dlambda):>14s}  "
                         f"{format_value(*r.x_g):>14s}  " + ", ".join(f"{f.chi2_dof:.2f}" for f in r.fits))
        return "\n".join(lines)

    __repr__ = summary


# ----------------------------------------------------------------------------- main entry point
def gluon_momentum_fraction(C, *, T: int | None = None, t_min, t_max: int | None = None, method: str = "flow",
                            lam1: float = 0.0, lam2: float | None = None, C_flowed=None, log_weights=None,
                            C_lam2=None, operator=None, eps: float | None = None, n_states: int = 1,
                            correlated: bool = True, bin_size: int = 1, fold: bool = False,
                            priors: dict | None = None, shrinkage: float | None = None,
                            svd_cut: float | None = None, label: str = ""):
    """⟨x⟩_g^latt = -(2/(3M)) dM/dλ from pion correlators (paper eqs. 12–17).

    Parameters
    ----------
    C : (N, T) correlators on the λ₁ ensemble (folded (N, T//2+1) with ``T`` given is accepted).
    t_min : int, or an iterable of ints for a scan (returns :class:`FHScan`).
    t_max : end of the fit window (default T//2: the paper's [t_min, T/2]).
    method : "flow" (needs C_flowed, log_weights, lam2), "epsilon" (needs operator; eps
        optional) or "independent" (needs C_lam2, lam2).
    lam1, lam2 : couplings of the two ensembles (λ₁ = 0 in the paper; λ₂ = 0.005).
    C_flowed : (N, T) correlators measured on the flowed configurations f(U).
    log_weights : (N,) unnormalised log w(f(U)) = log p_λ₂(f(U)) - log q(f(U)).
    C_lam2 : (N₂, T) correlators of an independent ensemble at λ₂.
    operator : (N,) lattice-summed O (eq. 16) on each λ₁ configuration.
    eps : finite ε for reweighting by exp(-ε O); None = exact derivative.
    n_states, correlated, priors, shrinkage, svd_cut : fit options (as in
        :func:`analysis.fit_correlator`). Where both fits are on the λ₁ configurations (flow,
        finite ε) they share one χ² metric, the covariance of the λ₁ mean: M(λ₂) - M(λ₁)
        cancels the fluctuations the two means share only if both are fitted alike, and the
        jackknife keeps the metric fixed, so two separately estimated covariances would add
        noise it does not see (errors of dM/dλ 10-30% too small with 30-50 jackknife bins).
        The second fit's χ²/dof is then with respect to that metric. Independent ensembles
        are fitted with their own covariances.
    bin_size : jackknife bin size (one deleted bin per replica, the same for every piece).
    fold : symmetrise/fold the correlators before fitting.

    Returns
    -------
    :class:`FHResult` (single t_min) or :class:`FHScan` (iterable t_min).
    """
    if method not in ("flow", "epsilon", "independent"):
        raise ValueError(f"method must be 'flow', 'epsilon' or 'independent', got {method!r}")
    C, T, _, t_max = _window(C, 0, t_max, T, fold)
    n = C.shape[0]

    def prep_other(X, name, n_expected=None):
        if X is None:
            raise ValueError(f"method={method!r} needs {name}=")
        X = _window(X, 0, t_max, T if not fold else None, fold)[0]
        if X.shape[1] != C.shape[1]:
            raise ValueError(f"{name} has {X.shape[1]} time slices, C has {C.shape[1]}")
        if n_expected is not None and X.shape[0] != n_expected:
            raise ValueError(f"{name} must be measured on the same {n_expected} configurations as C, "
                             f"got {X.shape[0]}")
        return X

    shared_metric = method != "independent"   # both fits on the same configurations
    if method == "flow":
        d = _dlam(lam1, lam2)
        Cf = prep_other(C_flowed, "C_flowed", n)
        if log_weights is None:
            raise ValueError("method='flow' needs log_weights= (log w(f(U)) per configuration)")
        (m1, m2), (r1, r2) = resample_means((C, Cf), log_weights=(None, log_weights), bin_size=bin_size)
        pieces = [(m1, r1), (m2, r2)]
    elif method == "independent":
        d = _dlam(lam1, lam2)
        C2 = prep_other(C_lam2, "C_lam2")
        pieces = [resample_means(C, bin_size=bin_size), resample_means(C2, bin_size=bin_size)]
    else:
        op = _centred_operator(operator, n)
        if eps is None:
            (mc, mo, mco), (rc, ro, rco) = resample_means((C, op, C * op[:, None]), bin_size=bin_size)
            D = -(mco - mc * mo)
            Drep = -(rco - rc * ro[:, None])
            pieces = [(mc, rc)]
        else:
            eps = float(eps)
            if eps == 0:
                raise ValueError("eps must be non-zero (or None for the exact derivative)")
            d = eps
            (m1, m2), (r1, r2) = resample_means((C, C), log_weights=(None, -eps * op), bin_size=bin_size)
            pieces = [(m1, r1), (m2, r2)]

    def one(t0):
        t0 = int(t0)
        if not 0 <= t0 < t_max:
            raise ValueError(f"need 0 <= t_min < t_max={t_max}, got {t0}")
        sl = slice(t0, t_max + 1)
        t = np.arange(t0, t_max + 1)
        fits = []
        metric = None
        for mean, reps in pieces:
            cov, full = _data_cov(reps[:, sl], "jackknife", None, correlated, shrinkage, svd_cut, None, len(t))
            if shared_metric and metric is not None:
                cov = metric                  # the λ₁ fit's χ² metric (see the docstring)
            metric = cov
            fits.append(fit_means(t, T, mean[sl], reps[:, sl], cov=cov, full_cov=full, method="jackknife",
                                  n_states=n_states, correlated=correlated, priors=priors,
                                  info={"bin_size": bin_size, "shrinkage": shrinkage, "svd_cut": svd_cut,
                                        "chi2_metric": "lambda1" if shared_metric else "own"}))
        if method == "epsilon" and eps is None:
            mean, reps = pieces[0]
            cov = fits[0].data_cov
            sig = np.sqrt(np.diag(cov))
            Dw, Drw = D[sl], Drep[:, sl]
            h = 1e-2 / max(np.max(np.abs(Dw) / sig), 1e-300)      # data moved by ≤ 1% of its error
            fp = fit_means(t, T, mean[sl] + h * Dw, reps[:, sl] + h * Drw, cov=cov, method="jackknife",
                           n_states=n_states, correlated=correlated, priors=priors,
                           p0={"E": fits[0].energies, "A": fits[0].amplitudes})
            fm = fit_means(t, T, mean[sl] - h * Dw, reps[:, sl] - h * Drw, cov=cov, method="jackknife",
                           n_states=n_states, correlated=correlated, priors=priors,
                           p0={"E": fits[0].energies, "A": fits[0].amplitudes})
            M = fits[0].mass
            dM = derive(lambda a, b: (a - b) / (2 * h), fp.mass, fm.mass, vectorized=True, label="dM/dlambda")
            M2 = None
        else:
            M, M2 = fits[0].mass, fits[1].mass
            if method == "independent":
                M, M2 = align_ensembles(M, M2)
            dM = derive(lambda a, b: (b - a) / d, M, M2, vectorized=True, label="dM/dlambda")
        xg = derive(lambda m, s: x_g_from_slope(m, s), M, dM, vectorized=True, label="<x>_g^latt")
        return FHResult(method=method, t_min=t0, t_max=t_max, T=T, lam1=float(lam1),
                        lam2=None if method == "epsilon" else float(lam2),
                        eps=eps if method == "epsilon" else None, mass=M, mass2=M2, dM_dlambda=dM,
                        x_g=xg, fits=tuple(fits), info={"bin_size": bin_size, "n_configs": n})

    if np.ndim(t_min) == 0:
        return one(t_min)
    return FHScan([one(t0) for t0 in t_min], label=label)
