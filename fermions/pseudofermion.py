"""Nf = 2 pseudofermion monomial on the even-odd preconditioned twisted-mass operator.

    det(M^dag M) = det(M_ee^dag M_ee) det(M^^dag M^),   det M_ee independent of U,

so the two degenerate flavours are represented by one complex pseudofermion phi on the odd sites:

    S_pf(U) = phi^dag (M^^dag M^)^{-1} phi,       heatbath  phi = M^^dag eta,  p(eta) ~ exp(-|eta|^2)

(then p(phi) ~ exp(-S_pf) and S_pf = |eta|^2 at the refresh configuration). With
X = (M^^dag M^)^{-1} phi and Y = M^ X,

    d S_pf = -2 Re[Y^dag dM^ X],   grad S_pf = -2 F[Omega^(Y, X)],

where Omega^ is the link derivative of Re[y^dag M^ x] (:meth:`TwistedMassWilson.schur_omega`,
built from the derivative of the even-odd hopping terms) and F[Omega] = -1/2 T[(Omega - Omega^dag)/2]
the su(N) conversion of docs/design.md §4 (:func:`fermions.wilson.force_from_omega`).

The action is evaluated with the energy functional S = 2 Re<phi, X> - |M^ X|^2, whose error is
quadratic in the CG residual (so dH of an HMC trajectory is not spoiled by a finite solver
tolerance). The monomial follows the :mod:`lattice.hmc` contract: ``action``, ``force``,
``refresh``.
"""
from __future__ import annotations

from lattice.backend import Rng, namespace
from lattice.layout import Layout, infer_gauge_layout

from .twisted_mass import TwistedMassWilson
from .wilson import force_from_omega, normalise_bc
from .solvers import LinearMap, resolve_solver

__all__ = ["PseudofermionNf2"]


class PseudofermionNf2:
    """Two-flavour twisted-mass pseudofermion monomial S = phi^dag (M^^dag M^)^{-1} phi.

    Parameters
    ----------
    kappa, mu : twisted-mass parameters (per flavour; the sign of mu is irrelevant here).
    bc : fermion boundary phases (default antiperiodic in time).
    action_tol, force_tol : CG true relative residuals for the action (Metropolis) and the force.
    maxiter : CG iteration limit.
    precision : "double" or "mixed" (complex64 inner CG with defect correction) for the force.
    chrono : use the previous force solution as the initial guess (faster; reversibility is
        then only as good as ``force_tol``).
    """

    name = "nf2_twisted_mass_pseudofermion"

    def __init__(self, kappa: float, mu: float, bc="antiperiodic", action_tol: float = 1e-11,
                 force_tol: float = 1e-9, maxiter: int | None = None, precision: str = "double",
                 chrono: bool = False):
        self.kappa = float(kappa)
        self.mu = float(mu)
        self.bc = normalise_bc(bc)
        self.action_tol = float(action_tol)
        self.force_tol = float(force_tol)
        self.maxiter = maxiter
        self.precision = precision
        self.chrono = bool(chrono)
        self.phi = None
        self._U_ref = None
        self._eta2 = None
        self._last_x = None
        self.cg_iterations = []          # (kind, iterations) of every solve, for diagnostics

    def params(self) -> dict:
        return {"name": self.name, "kappa": self.kappa, "mu": self.mu, "bc": [str(b) for b in self.bc],
                "action_tol": self.action_tol, "force_tol": self.force_tol, "precision": self.precision,
                "operator": "Mhat = M_oo - M_oe M_ee^-1 M_eo (odd sites), M = 1 + i 2 kappa mu gamma5 - kappa H"}

    def __repr__(self):
        return f"PseudofermionNf2(kappa={self.kappa}, mu={self.mu})"

    def operator(self, U, layout: Layout | None = None) -> TwistedMassWilson:
        return TwistedMassWilson(U, self.kappa, self.mu, layout=infer_gauge_layout(U, layout), bc=self.bc,
                                 check=False)

    # ------------------------------------------------------------------ monomial contract
    def refresh(self, U, rng: Rng, layout: Layout | None = None):
        """Heatbath: phi = M^[U]^dag eta with complex Gaussian eta (E|eta|^2 = 1) on the odd sites."""
        op = self.operator(U, layout)
        xp = op.xp
        batch = tuple(U.shape[: U.ndim - 7])
        eta = xp.astype(rng.complex_normal(lead=batch, layout=op.half_layout, inner=(4, op.N)), op.dtype)
        self.phi = op.apply_schur_dagger(eta)
        self._eta2 = op.half_layout.sum(xp.real(eta * xp.conj(eta)), inner=2)
        self._U_ref = xp.asarray(U, copy=True)       # a copy: U may be changed in place later
        self._last_x = None

    def _at_refresh_field(self, U, layout) -> bool:
        """Whether U equals, entry for entry, the field of the last :meth:`refresh` (on every
        rank: all ranks must take the same branch of :meth:`action`)."""
        ref = self._U_ref
        same = ref is not None and tuple(U.shape) == tuple(ref.shape) and U.dtype == ref.dtype
        if same:
            xp = namespace(U)
            same = bool(xp.all(U == ref))
        lay = infer_gauge_layout(U, layout)
        return lay.allreduce_max(0.0 if same else 1.0) == 0.0

    def _check(self, U):
        if self.phi is None:
            raise RuntimeError("pseudofermion field not set: call refresh(U, rng) first (lattice.hmc does this "
                               "at the start of every trajectory)")
        batch = tuple(U.shape[: U.ndim - 7])
        if tuple(self.phi.shape[: len(batch)]) != batch or self.phi.ndim != len(batch) + 6:
            raise ValueError(f"pseudofermion of shape {tuple(self.phi.shape)} does not match the gauge batch {batch}")

    def _solve(self, op, tol, x0=None, kind="force"):
        precision = "mixed" if self.precision == "mixed" and kind == "force" else "double"
        solver = resolve_solver(tol=tol, maxiter=self.maxiter, precision=precision)
        X, info = solver.solve(LinearMap(op, "apply_schur_normal"), self.phi, x0=x0, layout=op.half_layout,
                               what=f"pseudofermion CG ({kind})")
        self.cg_iterations.append((kind, info.iterations))
        return X

    def action(self, U, layout: Layout | None = None):
        """S_pf(U) per batch element (float64)."""
        self._check(U)
        if self._at_refresh_field(U, layout):
            return self._eta2                               # phi^dag (M^^dag M^)^{-1} phi = |eta|^2 exactly
        op = self.operator(U, layout)
        xp = op.xp
        X = self._solve(op, self.action_tol, kind="action")
        Y = op.apply_schur(X)
        dens = 2.0 * xp.real(xp.conj(self.phi) * X) - xp.real(Y * xp.conj(Y))
        return op.half_layout.sum(xp.astype(dens, xp.float64), inner=2)

    def force(self, U, layout: Layout | None = None):
        """grad S_pf (su(N) field of U's shape, docs/design.md §4)."""
        self._check(U)
        op = self.operator(U, layout)
        X = self._solve(op, self.force_tol, x0=self._last_x if self.chrono else None)
        if self.chrono:
            self._last_x = X
        Y = op.apply_schur(X)
        return -2.0 * force_from_omega(op.schur_omega(Y, X))

