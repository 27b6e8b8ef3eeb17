"""χ² fits of periodic correlators to sums of cosh forms.

Model (normalisation of :mod:`analysis.correlators`), on the fit window t_min ≤ t ≤ t_max:

    C(t) = Σ_{n=0}^{n_states-1} A_n [e^{-E_n t} + e^{-E_n (T - t)}],   E_0 < E_1 < ...

The energies are parametrised as E_0 and log-gaps, E_n = E_{n-1} + exp(ℓ_n), which keeps
the states ordered; amplitudes are free (either sign). Gaussian priors act on the physical
E_n and A_n.

Objective. With C̄ the (reweighted) sample mean over the window and Σ the covariance *of
the mean* estimated from the same resampling (jackknife by default, so binning and
reweighting are taken into account):

    χ²(θ) = (C̄ - m(θ))ᵀ Σ⁻¹ (C̄ - m(θ)) + Σ_priors ((p_j(θ) - μ_j)/σ_j)².

``correlated=False`` keeps only the diagonal of Σ. Optional regularisation of Σ:
``shrinkage=λ`` → (1-λ) Σ + λ diag(Σ); ``svd_cut=c`` → eigenvalues of the correlation matrix
below c·max are raised to c·max (conservative, as lsqfit's svdcut). χ² is minimised with
SciPy's Levenberg–Marquardt (analytic Jacobian). dof = n_points + n_priors - n_params;
p = P(χ²_dof > χ²) from the χ² distribution (with Σ estimated from N samples this is the
large-N approximation; the exact small-sample law is Hotelling's T²).

Errors (``errors=`` of :func:`fit_correlator`, recorded as :attr:`FitResult.error_method`;
the parameter errors themselves are :attr:`FitResult.energies_err` and
:attr:`FitResult.amplitudes_err`, or ``fit.energy(n).err``):
* ``"jackknife"`` (default) / ``"bootstrap"``: the fit is repeated on every resampled mean
  with the covariance held fixed at its full-sample estimate (the standard lattice
  practice); errors and correlations of all parameters come from the replicas, which are
  kept so that derived quantities (ratios, Feynman–Hellmann slopes) can be formed with
  :func:`analysis.derive`. The replica fits are one vectorised Gauss–Newton iteration over
  all replicas, started at the central fit, with a per-replica SciPy fallback.
* ``"hessian"``: (Jᵀ Σ⁻¹ J)⁻¹ at the minimum (no replica fits).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats, linalg

from .correlators import effective_mass, fold as fold_correlator
from .estimate import Estimate, format_value, replica_covariance
from .resampling import resample_means

__all__ = ["fit_correlator", "scan_t_min", "FitResult", "FitScan", "FitError", "regularize_covariance", "fit_means"]


class FitError(ValueError, RuntimeError):
    """The data cannot support the fit: its central fit did not converge, or the covariance of
    its window is not positive definite or has a zero variance. (A ValueError and a
    RuntimeError, the types these cases raised before.)"""


# ----------------------------------------------------------------------------- the model
class _CoshModel:
    """m(θ; t) for θ = [E0, ℓ_1..ℓ_{n-1}, A_0..A_{n-1}], vectorised over leading axes of θ."""

    def __init__(self, t, T, n_states):
        self.t = np.asarray(t, dtype=np.float64)
        self.T = float(T)
        self.n = int(n_states)

    @property
    def n_params(self):
        return 2 * self.n

    def energies(self, theta):
        th = np.asarray(theta)
        E0 = th[..., :1]
        if self.n == 1:
            return E0
        return np.concatenate([E0, E0 + np.cumsum(np.exp(th[..., 1:self.n]), axis=-1)], axis=-1)

    def dE_dtheta(self, theta):
        """(..., n, n): ∂E_j/∂θ_k for the energy parameters k = 0..n-1."""
        th = np.asarray(theta)
        n = self.n
        D = np.zeros(th.shape[:-1] + (n, n))
        D[..., :, 0] = 1.0
        if n > 1:
            g = np.exp(th[..., 1:n])                                # (..., n-1)
            lower = np.tril(np.ones((n, n)))[:, 1:]                  # k <= j for k >= 1
            D[..., :, 1:] = lower * g[..., None, :]
        return D

    def phys(self, theta):
        """(E, A) with shapes (..., n)."""
        return self.energies(theta), np.asarray(theta)[..., self.n:]

    def theta_from_phys(self, E, A):
        E = np.asarray(E, dtype=np.float64)
        gaps = np.diff(E, axis=-1)
        if np.any(gaps <= 0):
            raise ValueError(f"initial energies must be strictly increasing, got {E}")
        return np.concatenate([E[..., :1], np.log(gaps), np.asarray(A, dtype=np.float64)], axis=-1)

    def basis(self, E):
        t = self.t[:, None]
        E = np.asarray(E)[..., None, :]
        ef = np.exp(-E * t)
        eb = np.exp(-E * (self.T - t))
        return ef, eb

    def value_and_jac(self, theta):
        """m (..., nt) and ∂m/∂θ (..., nt, 2n)."""
        E, A = self.phys(theta)
        ef, eb = self.basis(E)
        f = ef + eb
        m = np.sum(A[..., None, :] * f, axis=-1)
        dm_dE = A[..., None, :] * (-self.t[:, None] * ef - (self.T - self.t[:, None]) * eb)
        jac = np.concatenate([dm_dE @ self.dE_dtheta(theta), f], axis=-1)
        return m, jac

    def phys_jacobian(self, theta):
        """∂(E, A)/∂θ, shape (2n, 2n), for error propagation."""
        n = self.n
        G = np.zeros((2 * n, 2 * n))
        G[:n, :n] = self.dE_dtheta(theta)
        G[n:, n:] = np.eye(n)
        return G


class _Objective:
    """Whitened residuals R(θ) = [L⁻¹(y - m(θ)); (p(θ) - μ)/σ] and their Jacobian."""

    def __init__(self, model: _CoshModel, cov, priors):
        self.model = model
        try:
            L = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise FitError("the covariance matrix of the fit window is not positive definite; "
                             "use more configurations (or a larger bin_size), shrinkage=, svd_cut= "
                             "or correlated=False") from None
        self.whiten = linalg.solve_triangular(L, np.eye(L.shape[0]), lower=True)
        n = model.n
        self.prior_idx, mu, sd = [], [], []
        for key, (m_, s_) in (priors or {}).items():
            kind, k = key[0], int(key[1:])
            if s_ <= 0:
                raise ValueError(f"prior width for {key} must be positive, got {s_}")
            self.prior_idx.append(k if kind == "E" else n + k)
            mu.append(m_)
            sd.append(s_)
        self.prior_mu = np.asarray(mu, dtype=np.float64)
        self.prior_sd = np.asarray(sd, dtype=np.float64)

    @property
    def n_prior(self):
        return len(self.prior_idx)

    def residuals(self, theta, y):
        """R (..., nt + n_prior) and ∂R/∂θ (..., nt + n_prior, 2n)."""
        m, dm = self.model.value_and_jac(theta)
        r = (np.asarray(y) - m) @ self.whiten.T
        J = -(self.whiten @ dm)
        if not self.prior_idx:
            return r, J
        E, A = self.model.phys(theta)
        p = np.concatenate([E, A], axis=-1)[..., self.prior_idx]
        rp = (p - self.prior_mu) / self.prior_sd
        G = np.zeros(np.shape(theta)[:-1] + (2 * self.model.n, 2 * self.model.n))
        G[..., :self.model.n, :self.model.n] = self.model.dE_dtheta(theta)
        G[..., self.model.n:, self.model.n:] = np.eye(self.model.n)
        Jp = G[..., self.prior_idx, :] / self.prior_sd[:, None]
        return np.concatenate([r, rp], axis=-1), np.concatenate([J, Jp], axis=-2)

    def chi2(self, theta, y):
        r, _ = self.residuals(theta, y)
        return np.sum(r * r, axis=-1)


def _scipy_fit(obj: _Objective, theta0, y):
    def fun(th):
        return obj.residuals(th, y)[0]

    def jac(th):
        return obj.residuals(th, y)[1]

    n_res = len(obj.model.t) + obj.n_prior
    method = "lm" if n_res >= obj.model.n_params else "trf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = optimize.least_squares(fun, theta0, jac=jac, method=method, xtol=1e-14, ftol=1e-14,
                                     gtol=1e-14, max_nfev=2000)
    return res.x, res.success and np.all(np.isfinite(res.x)), res.message


def _gauss_newton(obj: _Objective, theta0, Y, max_iter=50, tol=1e-11):
    """Minimise χ² for every row of Y (n_rep, nt) at once, starting from theta0 (p,).

    Gauss–Newton steps δ = -(JᵀJ)⁻¹ Jᵀ R, solved for all replicas in one batched call. A
    step is accepted if χ² does not rise by more than its rounding level (1e-9 (1 + χ²));
    otherwise it is halved. A replica has converged when its relative step is below ``tol``
    or the predicted decrease |J δ|² is negligible. Returns (theta (n_rep, p), failed mask).
    """
    n_rep = Y.shape[0]
    theta = np.broadcast_to(theta0, (n_rep, theta0.size)).copy()
    chi2 = obj.chi2(theta, Y)
    done = np.zeros(n_rep, dtype=bool)
    converged = np.zeros(n_rep, dtype=bool)
    for _ in range(max_iter):
        act = np.nonzero(~done)[0]
        if act.size == 0:
            break
        th, Ya, c_old = theta[act], Y[act], chi2[act]
        r, J = obj.residuals(th, Ya)
        JtJ = np.swapaxes(J, -1, -2) @ J
        Jtr = (np.swapaxes(J, -1, -2) @ r[..., None])[..., 0]
        try:
            step = -np.linalg.solve(JtJ, Jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            break
        pred = np.sum((J @ step[..., None])[..., 0] ** 2, axis=-1)      # GN-predicted χ² decrease
        slack = 1e-9 * (1.0 + c_old)
        scale = np.ones(act.size)
        new = th + step
        c_new = obj.chi2(new, Ya)
        for _halve in range(30):
            bad = ~(c_new <= c_old + slack)
            if not bad.any():
                break
            scale[bad] *= 0.5
            new[bad] = th[bad] + scale[bad, None] * step[bad]
            c_new[bad] = obj.chi2(new[bad], Ya[bad])
        ok = c_new <= c_old + slack
        theta[act[ok]] = new[ok]
        chi2[act[ok]] = c_new[ok]
        rel = np.max(np.abs(scale[:, None] * step) / (np.abs(th) + 1e-8), axis=-1)
        conv = ok & ((rel < tol) | (pred <= 1e-24 * (1.0 + c_old)))
        converged[act[conv]] = True
        done[act[conv | ~ok]] = True
    fail = ~converged | ~np.all(np.isfinite(theta), axis=-1)
    return theta, fail


def regularize_covariance(cov, correlated: bool = True, shrinkage: float | None = None,
                          svd_cut: float | None = None) -> np.ndarray:
    """Covariance used in χ²: diagonal if not correlated, then shrinkage, then SVD cut.

    shrinkage λ ∈ [0, 1]: Σ → (1-λ) Σ + λ diag(Σ).
    svd_cut c ∈ (0, 1): with Σ = D^{1/2} R D^{1/2}, eigenvalues of R below c·max(eig R)
    are replaced by c·max(eig R) (increases the errors of poorly determined modes).
    """
    cov = np.array(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance must be a square matrix, got shape {cov.shape}")
    if not np.allclose(cov, cov.T, rtol=1e-10, atol=0):
        raise ValueError("covariance matrix is not symmetric")
    d = np.diag(cov)
    if np.any(d <= 0):
        raise FitError("covariance has a non-positive variance on the diagonal (constant data?)")
    if not correlated:
        return np.diag(d)
    if shrinkage is not None:
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        cov = (1.0 - shrinkage) * cov + shrinkage * np.diag(d)
    if svd_cut is not None:
        if not 0.0 < svd_cut < 1.0:
            raise ValueError(f"svd_cut must be in (0, 1), got {svd_cut}")
        s = np.sqrt(d)
        R = cov / np.outer(s, s)
        ev, V = np.linalg.eigh(R)
        ev = np.maximum(ev, svd_cut * ev.max())
        cov = np.outer(s, s) * ((V * ev) @ V.T)
    return 0.5 * (cov + cov.T)


# ----------------------------------------------------------------------------- result records
@dataclass(repr=False)
class FitResult:
    """Result of a correlator fit (see the module docstring for conventions).

    energies, amplitudes : (n_states,) central values; energies_err, amplitudes_err : their errors.
    chi2, dof, p_value : goodness of fit (χ² includes prior terms; dof = points + priors - params).
    error_method : how the errors were computed, "jackknife" | "bootstrap" | "hessian".
    param_cov : (2n, 2n) covariance of (E_0..E_{n-1}, A_0..A_{n-1}) from ``error_method``.
    energies_replicas, amplitudes_replicas : (n_rep, n_states) replica fits (None for "hessian").
    t, data, data_cov : fit window, fitted (reweighted) mean and the covariance used in χ².
    ensembles : names of the ensembles of the replica blocks (see :mod:`analysis.estimate`).

    ``errors`` (the name of the error method, a string) is a deprecated alias of
    ``error_method``: the name suggested the parameter errors.
    """

    energies: np.ndarray
    amplitudes: np.ndarray
    energies_err: np.ndarray
    amplitudes_err: np.ndarray
    chi2: float
    dof: int
    p_value: float
    t_min: int
    t_max: int
    T: int
    n_states: int
    correlated: bool
    error_method: str
    param_cov: np.ndarray
    t: np.ndarray
    data: np.ndarray
    data_cov: np.ndarray
    energies_replicas: np.ndarray | None = None
    amplitudes_replicas: np.ndarray | None = None
    blocks: tuple | None = None
    n_failed_replicas: int = 0
    info: dict = field(default_factory=dict)
    ensembles: tuple | None = None

    @property
    def errors(self) -> str:
        """Deprecated alias of :attr:`error_method` (the parameter errors are ``energies_err``,
        ``amplitudes_err``)."""
        warnings.warn("FitResult.errors is deprecated and will be removed in the next release: it is the "
                      "name of the error method, now FitResult.error_method; the parameter errors are "
                      "FitResult.energies_err and FitResult.amplitudes_err (or fit.energy(n).err)",
                      DeprecationWarning, stacklevel=2)
        return self.error_method

    @property
    def chi2_dof(self) -> float:
        return self.chi2 / self.dof if self.dof > 0 else float("nan")

    def energy(self, n: int = 0) -> Estimate:
        """E_n as an :class:`Estimate` (with replicas, for derived quantities)."""
        return self._estimate(self.energies, self.energies_err, self.energies_replicas, n, f"E{n}")

    def amplitude(self, n: int = 0) -> Estimate:
        return self._estimate(self.amplitudes, self.amplitudes_err, self.amplitudes_replicas, n, f"A{n}")

    @property
    def mass(self) -> Estimate:
        """Ground-state energy E_0 (the hadron mass for a zero-momentum correlator)."""
        return self.energy(0)

    def _estimate(self, val, err, reps, n, label):
        if not 0 <= n < self.n_states:
            raise IndexError(f"state {n} not in a {self.n_states}-state fit")
        if reps is None:
            return Estimate(val[n], err[n], None, "hessian", label=label)
        return Estimate(val[n], err[n], reps[:, n], self.error_method, self.blocks, label,
                        ensembles=self.ensembles)

    def model(self, t=None) -> np.ndarray:
        """Central fit curve at times ``t`` (default: the fit window)."""
        from .correlators import cosh_model
        t = self.t if t is None else np.asarray(t)
        return cosh_model(t, self.T, self.energies, self.amplitudes)

    def model_estimate(self, t) -> Estimate:
        """Fit curve with its resampling error band at times ``t``."""
        from .correlators import cosh_model
        if self.energies_replicas is None:
            raise ValueError("error bands need replica fits (errors='jackknife' or 'bootstrap')")
        t = np.asarray(t)
        reps = cosh_model(t, self.T, self.energies_replicas, self.amplitudes_replicas)
        return Estimate.from_replicas(self.model(t), reps, self.error_method, self.blocks, "C_fit",
                                      ensembles=self.ensembles)

    def summary(self) -> str:
        corr = "correlated" if self.correlated else "uncorrelated"
        reg = []
        if self.info.get("shrinkage") is not None:
            reg.append(f"shrinkage={self.info['shrinkage']}")
        if self.info.get("svd_cut") is not None:
            reg.append(f"svd_cut={self.info['svd_cut']}")
        err = self.error_method
        if self.energies_replicas is not None:
            err += f", {self.energies_replicas.shape[0]} replicas"
            if self.info.get("bin_size"):
                err += f", bin_size={self.info['bin_size']}"
        head = (f"cosh fit: {self.n_states} state{'s' if self.n_states > 1 else ''}, "
                f"t = {self.t_min}..{self.t_max} ({len(self.t)} points), T = {self.T}, {corr}"
                + (f" ({', '.join(reg)})" if reg else "") + f"; errors: {err}")
        lines = [head,
                 f"  chi2/dof = {self.chi2:.3f}/{self.dof} = {self.chi2_dof:.3f}   p = {self.p_value:.3g}"]
        for n in range(self.n_states):
            lines.append(f"  E{n} = {format_value(self.energies[n], self.energies_err[n]):<18s}"
                         f"  A{n} = {format_value(self.amplitudes[n], self.amplitudes_err[n])}")
        if self.n_failed_replicas:
            lines.append(f"  warning: {self.n_failed_replicas} replica fits did not converge")
        if self.info.get("priors"):
            lines.append("  priors: " + ", ".join(f"{k} = {m} ± {s}" for k, (m, s) in self.info["priors"].items()))
        return "\n".join(lines)

    __repr__ = summary


@dataclass(repr=False)
class ScanResults:
    """A sequence of per-t_min results (each with a ``t_min`` attribute)."""

    results: list

    def __iter__(self):
        return iter(self.results)

    def __len__(self):
        return len(self.results)

    def __getitem__(self, i):
        return self.results[i]

    @property
    def t_min(self) -> np.ndarray:
        return np.array([r.t_min for r in self.results])


@dataclass(repr=False)
class FitScan(ScanResults):
    """Fits over a range of t_min (one :class:`FitResult` per entry of ``results``)."""

    def energy(self, n: int = 0):
        """(means, errors) of E_n against t_min."""
        return (np.array([r.energies[n] for r in self.results]),
                np.array([r.energies_err[n] for r in self.results]))

    @property
    def chi2_dof(self) -> np.ndarray:
        return np.array([r.chi2_dof for r in self.results])

    @property
    def p_value(self) -> np.ndarray:
        return np.array([r.p_value for r in self.results])

    def summary(self) -> str:
        if not self.results:
            return "FitScan(empty)"
        r0 = self.results[0]
        lines = [f"t_min scan: {r0.n_states}-state cosh fits, t_max = {r0.t_max}, T = {r0.T}, "
                 f"{'correlated' if r0.correlated else 'uncorrelated'}, errors: {r0.error_method}",
                 f"  {'t_min':>5s}  {'E0':>16s}  {'chi2/dof':>9s}  {'p':>7s}"]
        for r in self.results:
            lines.append(f"  {r.t_min:5d}  {format_value(r.energies[0], r.energies_err[0]):>16s}  "
                         f"{r.chi2_dof:9.3f}  {r.p_value:7.3g}")
        return "\n".join(lines)

    __repr__ = summary


# ----------------------------------------------------------------------------- fitting
def _check_priors(priors, n_states):
    if priors is None:
        return {}
    out = {}
    for key, val in priors.items():
        if not (isinstance(key, str) and len(key) >= 2 and key[0] in "EA" and key[1:].isdigit()
                and int(key[1:]) < n_states):
            raise ValueError(f"prior keys are 'E<n>' or 'A<n>' with n < n_states={n_states}, got {key!r}")
        m, s = val
        out[key] = (float(m), float(s))
    return out


def _initial_theta(model, obj, ybar, priors, p0):
    n = model.n
    if p0 is not None:
        E = np.asarray(p0["E"], dtype=np.float64)
        A = np.asarray(p0["A"], dtype=np.float64) if "A" in p0 else None
    else:
        E = np.empty(n)
        m = np.nan
        if len(model.t) >= 2:
            m = float(effective_mass(ybar[:2], "cosh", T=model.T, t0=int(model.t[0]))[0])
            if not np.isfinite(m):
                with np.errstate(all="ignore"):
                    m = float(np.log(ybar[0] / ybar[1])) if ybar[0] * ybar[1] > 0 else np.nan
        E[0] = priors["E0"][0] if "E0" in priors else (m if np.isfinite(m) and m > 0 else 0.5)
        gap = max(E[0], 0.3)
        for k in range(1, n):
            E[k] = priors[f"E{k}"][0] if f"E{k}" in priors and priors[f"E{k}"][0] > E[k - 1] \
                else E[k - 1] + gap
        A = None
    if len(E) != n:
        raise ValueError(f"p0['E'] must have {n} entries")
    if A is None:                                    # amplitudes by linear least squares given E
        ef, eb = model.basis(E)
        F = obj.whiten @ (ef + eb)
        A = np.linalg.lstsq(F, obj.whiten @ ybar, rcond=None)[0]
        for k in range(n):
            if f"A{k}" in priors:
                A[k] = priors[f"A{k}"][0]
    return model.theta_from_phys(E, A)


def fit_means(t, T, ybar, yrep=None, *, cov, n_states=1, method="jackknife", blocks=None,
              errors="jackknife", priors=None, p0=None, correlated=True, full_cov=None,
              info=None, ensembles=None) -> FitResult:
    """Fit a mean correlator on the window ``t`` and (optionally) its resampling replicas.

    Low-level entry point used by :func:`fit_correlator` and the Feynman–Hellmann analysis.
    ``ybar`` (nt,), ``yrep`` (n_rep, nt) resampled means from ``method`` (with ``blocks``),
    ``cov`` (nt, nt) the covariance used in χ² (already regularised); ``ensembles`` names the
    blocks (see :mod:`analysis.estimate`). ``full_cov``: the
    unregularised covariance of the mean; when it differs from ``cov`` (uncorrelated or
    regularised fits) the "hessian" errors use the sandwich formula
    H⁻¹ Jᵀ Σ_χ⁻¹ Σ_full Σ_χ⁻¹ J H⁻¹, H = Jᵀ Σ_χ⁻¹ J (+ priors), which stays correct when the
    χ² metric is not the data covariance.
    """
    t = np.asarray(t)
    ybar = np.asarray(ybar, dtype=np.float64)
    if errors not in ("jackknife", "bootstrap", "hessian"):
        raise ValueError(f"errors must be 'jackknife', 'bootstrap' or 'hessian', got {errors!r}")
    if errors != "hessian" and yrep is None:
        raise ValueError(f"errors={errors!r} needs the resampled means yrep")
    priors = _check_priors(priors, n_states)
    model = _CoshModel(t, T, n_states)
    obj = _Objective(model, cov, priors)
    dof = len(t) + obj.n_prior - model.n_params
    if len(t) + obj.n_prior < model.n_params:
        raise ValueError(f"{len(t)} points and {obj.n_prior} priors cannot determine {model.n_params} "
                         f"parameters of a {n_states}-state fit; widen the window or add priors")
    theta0 = _initial_theta(model, obj, ybar, priors, p0)
    theta, ok, msg = _scipy_fit(obj, theta0, ybar)
    if not ok:
        raise FitError(f"central fit did not converge: {msg}")
    theta, _ = _gauss_newton(obj, theta, ybar[None, :])      # polish to the exact minimum
    theta = theta[0]
    chi2 = float(obj.chi2(theta, ybar))
    p_value = float(stats.chi2.sf(chi2, dof)) if dof > 0 else float("nan")
    E, A = model.phys(theta)
    r, J = obj.residuals(theta, ybar)
    G = model.phys_jacobian(theta)
    try:
        Hinv = np.linalg.inv(J.T @ J)
        if full_cov is not None and not np.array_equal(np.asarray(full_cov), np.asarray(cov)):
            Jd = J[:len(t)]                                   # data rows: -L⁻¹ ∂m/∂θ
            Wd = obj.whiten @ np.asarray(full_cov) @ obj.whiten.T
            meat = Jd.T @ Wd @ Jd + J[len(t):].T @ J[len(t):]
            Hinv = Hinv @ meat @ Hinv
        cov_h = G @ Hinv @ G.T
    except np.linalg.LinAlgError:
        cov_h = np.full((2 * n_states, 2 * n_states), np.nan)
    E_reps = A_reps = None
    n_failed = 0
    if errors == "hessian":
        pcov = cov_h
    else:
        yrep = np.asarray(yrep, dtype=np.float64)
        th_reps, fail = _gauss_newton(obj, theta, yrep)
        for k in np.nonzero(fail)[0]:                        # robust fallback, rarely needed
            th_k, ok_k, _ = _scipy_fit(obj, theta, yrep[k])
            if ok_k:
                th_reps[k] = th_k
                fail[k] = False
        n_failed = int(fail.sum())
        th_reps[fail] = np.nan
        if n_failed:
            warnings.warn(f"{n_failed} of {len(yrep)} replica fits did not converge; their errors are NaN",
                          RuntimeWarning, stacklevel=3)
        E_reps, A_reps = model.phys(th_reps)
        pcov = replica_covariance(np.concatenate([E_reps, A_reps], axis=-1), errors, blocks)
    perr = np.sqrt(np.diag(pcov))
    info = dict(info or {})
    info.update(priors=priors, param_cov_hessian=cov_h, theta=theta)
    return FitResult(energies=E, amplitudes=A, energies_err=perr[:n_states], amplitudes_err=perr[n_states:],
                     chi2=chi2, dof=int(dof), p_value=p_value, t_min=int(t[0]), t_max=int(t[-1]), T=int(T),
                     n_states=int(n_states), correlated=bool(correlated), error_method=errors, param_cov=pcov,
                     t=t, data=ybar, data_cov=np.asarray(cov), energies_replicas=E_reps,
                     amplitudes_replicas=A_reps, blocks=blocks if E_reps is not None else None,
                     n_failed_replicas=n_failed, info=info,
                     ensembles=tuple(ensembles) if (ensembles is not None and E_reps is not None) else None)


def _window(C_samples, t_min, t_max, T, fold):
    C = np.asarray(C_samples)
    if C.ndim != 2:
        raise ValueError(f"C_samples must have shape (configurations, T), got {C.shape}")
    if fold:
        if T is not None and C.shape[1] != T:
            raise ValueError(f"fold=True needs the full correlator of length T={T}, got {C.shape[1]}")
        T = C.shape[1]
        C = fold_correlator(C)
    T = C.shape[1] if T is None else int(T)
    n_t = C.shape[1]
    if n_t not in (T, T // 2 + 1):
        raise ValueError(f"C_samples has {n_t} time slices; expected T={T} (full) or T//2+1={T // 2 + 1} (folded)")
    t_max = T // 2 if t_max is None else int(t_max)
    t_min = int(t_min)
    if not 0 <= t_min < t_max <= n_t - 1:
        raise ValueError(f"need 0 <= t_min < t_max <= {n_t - 1}, got t_min={t_min}, t_max={t_max}")
    return C, T, t_min, t_max


def _data_cov(yrep, method, blocks, correlated, shrinkage, svd_cut, cov, nt):
    """(covariance used in χ², full covariance of the mean) on the fit window."""
    if cov is not None:
        cov = np.asarray(cov, dtype=np.float64)
        if cov.shape != (nt, nt):
            raise ValueError(f"cov must have shape ({nt}, {nt}) for the fit window, got {cov.shape}")
    else:
        if correlated and shrinkage is None and svd_cut is None and yrep.shape[0] - len(blocks or (1,)) < nt:
            raise ValueError(f"correlated fit of {nt} points with only {yrep.shape[0]} resampling replicas: "
                             "the covariance estimate is singular; use more data, a smaller window, "
                             "shrinkage=, svd_cut= or correlated=False")
        cov = replica_covariance(yrep, method, blocks)
    return regularize_covariance(cov, correlated, shrinkage, svd_cut), cov


def fit_correlator(C_samples, t_min: int, t_max: int | None = None, T: int | None = None,
                   n_states: int = 1, correlated: bool = True, log_weights=None, *,
                   fold: bool = False, bin_size: int = 1, errors: str = "jackknife", n_boot: int = 1000,
                   seed=0, priors: dict | None = None, p0: dict | None = None, cov=None,
                   shrinkage: float | None = None, svd_cut: float | None = None, ensemble: str = "") -> FitResult:
    """χ² fit of C(t) = Σ_n A_n [e^{-E_n t} + e^{-E_n (T-t)}] on t_min ≤ t ≤ t_max.

    Parameters
    ----------
    C_samples : (configurations, T) per-configuration correlators (or folded,
        (configurations, T//2 + 1), with ``T`` given).
    t_min, t_max : inclusive fit window (t_max defaults to T//2, the paper's [t_min, T/2]).
    T : time extent (default: the number of time slices).
    n_states : number of cosh terms.
    correlated : full covariance (True) or its diagonal (False) in χ².
    log_weights : per-configuration log-weights (N,): fit the reweighted mean ⟨wC⟩/⟨w⟩, with
        covariance and replicas from the reweighted resampling.
    fold : symmetrise and fold the samples first (then t ≤ T//2).
    bin_size : configurations per bin of the resampling.
    errors : "jackknife" | "bootstrap" | "hessian" (see module docstring); bootstrap uses
        ``n_boot`` and ``seed``.
    priors : {"E0": (mean, width), "A1": (mean, width), ...} Gaussian priors.
    p0 : {"E": [...], "A": [...]} starting values (default: effective mass, linear solve for A).
    cov : covariance of the mean on the window to use instead of the resampling estimate.
    shrinkage, svd_cut : covariance regularisation (see :func:`regularize_covariance`).
    ensemble : name of the ensemble; fit results of differently named ensembles combine as
        independent in arithmetic (``fit_a.mass / fit_b.mass``).

    Returns
    -------
    :class:`FitResult` with energies, amplitudes, their errors, chi2, dof, chi2_dof,
    p_value, and replica fits (``fit.energy(0)`` is an :class:`Estimate`).
    """
    C, T, t_min, t_max = _window(C_samples, t_min, t_max, T, fold)
    win = C[:, t_min:t_max + 1]
    method = "bootstrap" if errors == "bootstrap" else "jackknife"
    ybar, yrep = resample_means(win, log_weights, bin_size, method=method, n_boot=n_boot, seed=seed)
    data_cov, full_cov = _data_cov(yrep, method, None, correlated, shrinkage, svd_cut, cov, win.shape[1])
    return fit_means(np.arange(t_min, t_max + 1), T, ybar, yrep, cov=data_cov, n_states=n_states,
                     method=method, blocks=None, errors=errors, priors=priors, p0=p0, correlated=correlated,
                     full_cov=full_cov,
                     info={"bin_size": bin_size, "n_configs": C.shape[0], "shrinkage": shrinkage,
                           "svd_cut": svd_cut, "reweighted": log_weights is not None},
                     ensembles=(ensemble,))


def scan_t_min(C_samples, t_mins, t_max: int | None = None, T: int | None = None, **kwargs) -> FitScan:
    """:func:`fit_correlator` for every t_min in ``t_mins`` (same t_max and options).

    Fit ranges that fail (too few points, no convergence) are skipped with a warning.
    """
    results = []
    for t0 in t_mins:
        try:
            results.append(fit_correlator(C_samples, int(t0), t_max, T, **kwargs))
        except (ValueError, RuntimeError) as exc:
            warnings.warn(f"t_min={t0}: fit skipped ({exc})", RuntimeWarning, stacklevel=2)
    return FitScan(results)
