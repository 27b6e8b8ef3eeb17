"""Synthetic correlator ensembles with known answers, for tests, benchmarks and examples.

* :func:`synthetic_correlators`: C_i(t) = Σ_n A_n [e^{-E_n t} + e^{-E_n(T-t)}] times
  (1 + correlated Gaussian noise), configurations independent.
* :class:`ToyFeynmanHellmann`: a Gaussian model of the Feynman–Hellmann set-up of the
  paper (eqs. 12–17) in which every estimator has a known exact answer.

The toy model. A configuration carries an operator value O (the lattice-summed operator of
eq. 16) and a noise vector η(t). Under S_λ = S_0 + λ O with O ~ N(μ, σ_O²) at λ = 0,
exact Gaussian tilting gives O ~ N(μ - λ σ_O², σ_O²) at λ; η is independent of λ. The
per-configuration correlator is

    C(t) = C_0(t) + (O - μ) g(t) + C_0(t) · noise · η(t),   g(t) = -(dM/dλ)/σ_O² · ∂C_0/∂M,

so that ⟨C(t)⟩_λ = C_0(t) + λ (dM/dλ) ∂C_0/∂M exactly: the ground-state mass moves with
slope ``dM_dlambda`` to first order, d⟨C⟩/dλ = -⟨C O⟩ + ⟨C⟩⟨O⟩ = -σ_O² g(t), and the
paper's lattice momentum fraction (eq. 17) is ⟨x⟩_g = -(2/(3M)) dM/dλ.
A "flow" λ₁ → λ₂ shifts O by -s (λ₂-λ₁) σ_O² (s = 1: perfect transport) and keeps η, so the
flowed correlator is strongly correlated with the original one; its log-weight
log p_λ₂(f(U)) - log q(f(U)) is the exact Gaussian ratio (unnormalised).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .correlators import cosh_model

__all__ = ["synthetic_correlators", "ToyFeynmanHellmann", "ToyEnsemble"]


def _noise(rng, n, T, correlation):
    """(n, T) unit-variance Gaussian noise with corr(t, t') = correlation^|t - t'|."""
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"correlation must be in [0, 1), got {correlation}")
    t = np.arange(T)
    L = np.linalg.cholesky(correlation ** np.abs(t[:, None] - t[None, :]))
    return rng.standard_normal((n, T)) @ L.T


def synthetic_correlators(n_configs: int, T: int, energies=(0.3,), amplitudes=(1.0,), *, noise: float = 0.05,
                          correlation: float = 0.8, seed=0) -> np.ndarray:
    """(n_configs, T) correlators A_n[e^{-E_n t} + e^{-E_n(T-t)}] · (1 + noise·η(t)).

    η is Gaussian with unit variance and corr(η(t), η(t')) = correlation^|t-t'|; each
    configuration is independent. The exact mean is :func:`analysis.correlators.cosh_model`.
    """
    rng = np.random.default_rng(seed)
    c0 = cosh_model(np.arange(T), T, energies, amplitudes)
    return c0 * (1.0 + noise * _noise(rng, int(n_configs), int(T), correlation))


@dataclass
class ToyEnsemble:
    """One synthetic ensemble: correlators C (n, T), operator values O (n,), noise eta (n, T)."""

    lam: float
    C: np.ndarray
    O: np.ndarray
    eta: np.ndarray


@dataclass
class ToyFeynmanHellmann:
    """Gaussian toy model of the Feynman–Hellmann analysis with exactly known answers.

    mass, amplitude : ground state at λ = 0; excited : optional (E1, A1) contamination
    (λ-independent). dM_dlambda : true slope of the ground-state mass. sigma_O, mu_O : width
    and mean of O at λ = 0. noise, correlation : relative correlator noise and its time
    correlation.
    """

    T: int = 24
    mass: float = 0.276
    amplitude: float = 1.0
    excited: tuple | None = None
    dM_dlambda: float = -0.1656          # = -(3M/2)·0.4, i.e. <x>_g = 0.4 at M = 0.276
    sigma_O: float = 30.0
    mu_O: float = 1000.0
    noise: float = 0.05
    correlation: float = 0.8

    @property
    def x_g(self) -> float:
        """True ⟨x⟩_g^latt = -(2/(3M)) dM/dλ (paper eq. 17 convention)."""
        return -2.0 * self.dM_dlambda / (3.0 * self.mass)

    def c0(self) -> np.ndarray:
        t = np.arange(self.T)
        c = cosh_model(t, self.T, [self.mass], [self.amplitude])
        if self.excited is not None:
            c = c + cosh_model(t, self.T, [self.excited[0]], [self.excited[1]])
        return c

    def g(self) -> np.ndarray:
        t = np.arange(self.T)
        M = self.mass
        dC_dM = -self.amplitude * (t * np.exp(-M * t) + (self.T - t) * np.exp(-M * (self.T - t)))
        return -self.dM_dlambda / self.sigma_O ** 2 * dC_dM

    def mean_correlator(self, lam: float) -> np.ndarray:
        """Exact ⟨C(t)⟩_λ."""
        return self.c0() - lam * self.sigma_O ** 2 * self.g()

    def dC_dlambda(self) -> np.ndarray:
        """Exact d⟨C(t)⟩/dλ (independent of λ in this model)."""
        return -self.sigma_O ** 2 * self.g()

    def correlator(self, O, eta) -> np.ndarray:
        return self.c0() * (1.0 + self.noise * eta) + (np.asarray(O)[:, None] - self.mu_O) * self.g()

    def ensemble(self, lam: float, n: int, seed=0) -> ToyEnsemble:
        """n independent configurations at coupling λ."""
        rng = np.random.default_rng(seed)
        O = self.mu_O - lam * self.sigma_O ** 2 + self.sigma_O * rng.standard_normal(int(n))
        eta = _noise(rng, int(n), self.T, self.correlation)
        return ToyEnsemble(float(lam), self.correlator(O, eta), O, eta)

    def flow(self, ens: ToyEnsemble, lam2: float, quality: float = 0.9):
        """Flow ens (at λ₁) towards λ₂: returns (C on f(U), log w(f(U))), unnormalised log-weights.

        f shifts O by -quality (λ₂-λ₁) σ_O² and keeps η; log w = log p_λ₂(O') - log q(O')
        with q the density of O' (a Gaussian shifted by the flow), plus an arbitrary constant.
        """
        s2 = self.sigma_O ** 2
        d = lam2 - ens.lam
        O_f = ens.O - quality * d * s2
        mean_q = self.mu_O - ens.lam * s2 - quality * d * s2
        mean_p = self.mu_O - lam2 * s2
        log_w = (-(O_f - mean_p) ** 2 + (O_f - mean_q) ** 2) / (2 * s2) + 123.0   # constant: weights are normalised
        return self.correlator(O_f, ens.eta), log_w
