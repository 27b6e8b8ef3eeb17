"""The twisted-mass Wilson operator (one flavour) and its even-odd preconditioning.

    M = 1 + i mu~ gamma_5 - kappa H,        mu~ = 2 kappa mu       (tmLQCD hopping normalisation)

with H the Wilson hopping term of :mod:`fermions.wilson` (antiperiodic in time by default) and
the chiral gamma basis of :mod:`fermions.gamma`. The sign of ``mu`` selects the flavour
(M(+mu) for "up", M(-mu) for "down"); gamma_5-hermiticity gives M(mu)^dag = gamma_5 M(-mu) gamma_5,
so M_d = gamma_5 M_u^dag gamma_5 and det(M_u M_d) = det(M^dag M) (Nf = 2).

Even-odd preconditioning
------------------------
Ordering the sites (even, odd), M = [[M_ee, M_eo], [M_oe, M_oo]] with the site-diagonal
M_ee = M_oo = A = 1 + i mu~ gamma_5, A^{-1} = (1 - i mu~ gamma_5) / (1 + mu~^2), and the hopping
blocks M_eo = -kappa H_eo, M_oe = -kappa H_oe. The Schur complement on the odd sites is

    M^ = M_oo - M_oe M_ee^{-1} M_eo = A - kappa^2 H_oe A^{-1} H_eo,

and det M = det M_ee det M^ with det M_ee = (1 + mu~^2)^{2 N V/2} independent of U, so
determinant ratios can be taken on M^ alone. M^dag = gamma_5 M^(-mu) gamma_5. Solving
M psi = b: psi_o = M^{-1} (b_o - M_oe A^{-1} b_e) (CG on M^dag M^), then
psi_e = A^{-1} (b_e - M_eo psi_o); the steps are :class:`fermions.preconditioners.EvenOddSchur`
and the CG a solver object of :mod:`fermions.solvers`, both exchangeable in :meth:`solve`.

Packed even/odd fields have site shape (L_0/2, L_1, L_2, L_3) (see :mod:`fermions.evenodd`);
use :meth:`TwistedMassWilson.pack` / :meth:`TwistedMassWilson.unpack`.

Shapes: U (*batch, 4, L0, L1, L2, L3, N, N); spinors (*batch', L0, L1, L2, L3, 4, N) where
batch' broadcasts against batch (extra leading axes = several spinors per configuration).
"""
from __future__ import annotations

import math

from lattice.backend import namespace, to_host
from lattice.layout import Layout, infer_gauge_layout
from lattice import su_n

from .wilson import WilsonLinks, to_soa, from_soa, normalise_bc, omega_to_gauge
from .evenodd import even_odd
from .solvers import resolve_solver
from .preconditioners import EvenOddSchur

__all__ = ["TwistedMassWilson", "SolveInfo"]

_SPIN = -6


def _cat(up, dn):
    xp = namespace(up, dn)
    return xp.concat([up, dn], axis=_SPIN)


def _halves(psi):
    return psi[..., 0:2, :, :, :, :, :], psi[..., 2:4, :, :, :, :, :]


class SolveInfo(dict):
    """Result record of :meth:`TwistedMassWilson.solve` (a dict with attribute access):
    ``cg`` (the CG info of the reduced solve), ``residual`` (worst true relative residual
    ||b - M psi|| / ||b|| of the full system), ``residuals`` (per batch element), ``solver`` and
    ``preconditioner`` (their ``config()`` dicts)."""

    __getattr__ = dict.__getitem__


class TwistedMassWilson:
    """Twisted-mass Wilson operator M = 1 + i mu~ gamma_5 - kappa H, mu~ = 2 kappa mu.

    Parameters
    ----------
    U : gauge field (*batch, 4, L0, L1, L2, L3, N, N), complex128 (or complex64).
    kappa : hopping parameter (> 0).
    mu : twisted mass a*mu (any sign; the sign selects the flavour).
    layout : :class:`lattice.Layout` (inferred for a single process).
    bc : boundary phases, ``"antiperiodic"`` (default: antiperiodic in time) or 4 phases.
    check : validate that U is in SU(N) (costs a few hopping applications).

    Full-lattice methods take spinors (*batch, L0, .., L3, 4, N); even-odd methods take packed
    half-lattice spinors (*batch, L0/2, L1, L2, L3, 4, N).
    """

    def __init__(self, U, kappa: float, mu: float, layout: Layout | None = None, bc="antiperiodic",
                 check: bool = True, _links: WilsonLinks | None = None):
        layout = infer_gauge_layout(U, layout)
        if layout.Nd != 4:
            raise ValueError(f"the Wilson operator is four-dimensional; got a {layout.Nd}d gauge field")
        kappa, mu = float(kappa), float(mu)
        if not (kappa > 0 and math.isfinite(kappa)):
            raise ValueError(f"kappa must be a positive finite number, got {kappa}")
        if not math.isfinite(mu):
            raise ValueError(f"mu must be finite, got {mu}")
        if check:
            su_n.check_su_n(U, what="gauge field of the Dirac operator")
        self.U = U
        self.layout = layout
        self.kappa = kappa
        self.mu = mu
        self.mu_tilde = 2.0 * kappa * mu
        self.bc = normalise_bc(bc)
        self.N = U.shape[-1]
        self.xp = namespace(U)
        self.dtype = U.dtype
        self.links = _links if _links is not None else WilsonLinks(U, layout, self.bc)
        mt = self.mu_tilde
        self._a = complex(1.0, mt)                    # A on the upper (gamma_5 = +1) rows
        self._ainv = complex(1.0, -mt) / (1.0 + mt * mt)

    def __repr__(self):
        return (f"TwistedMassWilson(kappa={self.kappa}, mu={self.mu}, bc={self.bc}, "
                f"lattice={self.layout.global_shape}, N={self.N})")

    # ------------------------------------------------------------------ variants
    def with_mu(self, mu: float) -> "TwistedMassWilson":
        """The same gauge field and kappa with another twisted mass (shares the links)."""
        return TwistedMassWilson(self.U, self.kappa, mu, self.layout, self.bc, check=False, _links=self.links)

    def flipped(self) -> "TwistedMassWilson":
        """The other flavour, M(-mu)."""
        return self.with_mu(-self.mu)

    def astype(self, dtype) -> "TwistedMassWilson":
        """The operator in another precision (e.g. complex64 for an inner solver)."""
        xp = self.xp
        new = TwistedMassWilson.__new__(TwistedMassWilson)
        new.__dict__.update(self.__dict__)
        new.U = xp.astype(self.U, dtype)
        new.links = self.links.astype(dtype)
        new.dtype = dtype
        return new

    @property
    def even_odd(self):
        """The :class:`fermions.evenodd.EvenOdd` geometry (half layout ``.half``)."""
        return even_odd(self.layout)

    @property
    def half_layout(self) -> Layout:
        return self.even_odd.half

    # ------------------------------------------------------------------ SoA internals
    def _diag(self, psi, a):
        """diag(a on gamma_5 = +1 rows, conj(a) on gamma_5 = -1 rows)."""
        up, dn = _halves(psi)
        return _cat(a * up, a.conjugate() * dn)

    def _M(self, psi, dagger=False):
        """M psi, or M^dag psi = (1 - i mu~ g5) psi - kappa g5 H g5 psi (the kernel's adjoint)."""
        up, dn = _halves(psi)
        hu, hd = self.links.hop(psi, dagger=dagger)
        a = self._a.conjugate() if dagger else self._a
        return _cat(a * up - self.kappa * hu, a.conjugate() * dn - self.kappa * hd)

    def _hop(self, psi):
        return _cat(*self.links.hop(psi))

    def _hop_eo(self, psi, target):
        return _cat(*self.links.hop_eo(psi, target))

    def _schur(self, x, dagger=False):
        """M^ x (or M^dag x = A^dag x - kappa^2 (g5 H_oe g5) A^-dag (g5 H_eo g5) x) on packed odd
        SoA spinors."""
        k2 = self.kappa * self.kappa
        up, dn = _halves(x)
        a, ai = self._a, self._ainv
        if dagger:
            a, ai = a.conjugate(), ai.conjugate()
        hu, hd = self.links.hop_eo(x, 0, dagger=dagger)
        hu, hd = self.links.hop_eo(_cat(ai * hu, ai.conjugate() * hd), 1, dagger=dagger)
        return _cat(a * up - k2 * hu, a.conjugate() * dn - k2 * hd)

    # ------------------------------------------------------------------ full lattice (public)
    def apply(self, psi):
        """M psi."""
        return from_soa(self._M(to_soa(psi)))

    def apply_dagger(self, psi):
        """M^dag psi = gamma_5 M(-mu) gamma_5 psi."""
        return from_soa(self._M(to_soa(psi), dagger=True))

    def apply_normal(self, psi):
        """M^dag M psi."""
        return from_soa(self._M(self._M(to_soa(psi)), dagger=True))

    def hopping(self, psi):
        """H psi (the Wilson hopping term alone, with the boundary phases)."""
        return from_soa(self._hop(to_soa(psi)))

    # ------------------------------------------------------------------ even-odd (public)
    def pack(self, psi):
        """Full spinor -> (even, odd) packed half-lattice spinors."""
        return self.even_odd.pack(psi, inner=2)

    def unpack(self, psi_e, psi_o):
        """(even, odd) packed spinors -> full spinor."""
        return self.even_odd.unpack(psi_e, psi_o, inner=2)

    def apply_ee(self, x):
        """M_ee x = M_oo x = (1 + i mu~ gamma_5) x (site-diagonal; either parity)."""
        return from_soa(self._diag(to_soa(x), self._a))

    apply_oo = apply_ee

    def apply_ee_inv(self, x):
        """M_ee^{-1} x = (1 - i mu~ gamma_5) x / (1 + mu~^2)."""
        return from_soa(self._diag(to_soa(x), self._ainv))

    apply_oo_inv = apply_ee_inv

    def hop_eo(self, x_o):
        """H_eo x_o: odd -> even hopping."""
        return from_soa(self._hop_eo(to_soa(x_o), 0))

    def hop_oe(self, x_e):
        """H_oe x_e: even -> odd hopping."""
        return from_soa(self._hop_eo(to_soa(x_e), 1))

    def apply_eo(self, x_o):
        """M_eo x_o = -kappa H_eo x_o."""
        return (-self.kappa) * self.hop_eo(x_o)

    def apply_oe(self, x_e):
        """M_oe x_e = -kappa H_oe x_e."""
        return (-self.kappa) * self.hop_oe(x_e)

    def apply_schur(self, x_o):
        """M^ x_o = (A - kappa^2 H_oe A^{-1} H_eo) x_o on the odd sites."""
        return from_soa(self._schur(to_soa(x_o)))

    def apply_schur_dagger(self, x_o):
        """M^dag x_o = gamma_5 M^(-mu) gamma_5 x_o."""
        return from_soa(self._schur(to_soa(x_o), dagger=True))

    def apply_schur_normal(self, x_o):
        """M^dag M^ x_o (Hermitian positive definite; the CG operator of the solves)."""
        return from_soa(self._schur(self._schur(to_soa(x_o)), dagger=True))

    def apply_schur_mmdag(self, x_o):
        """M^ M^dag x_o (Hermitian positive definite)."""
        return from_soa(self._schur(self._schur(to_soa(x_o), dagger=True)))

    def apply_gamma5_schur(self, x_o):
        """gamma_5 M^ x_o."""
        y = self._schur(to_soa(x_o))
        up, dn = _halves(y)
        return from_soa(_cat(up, -dn))

    # ------------------------------------------------------------------ solves
    def solve_schur(self, b_o, tol: float | None = None, maxiter: int | None = None, x0=None,
                    on_failure: str | None = None, precision: str | None = None, *, solver=None):
        """Solve M^ x = b_o on the odd sites via CG on M^dag M^ x = M^dag b_o.

        ``tol`` (default 1e-10) is the true relative residual of the normal equations; ``precision``
        "double" (default) or "mixed" (complex64 inner CG). Or pass a ``solver`` object
        (:mod:`fermions.solvers`) instead of tol/maxiter/on_failure/precision.
        Returns (x, CGInfo).
        """
        solver = resolve_solver(solver, tol=tol, maxiter=maxiter, on_failure=on_failure, precision=precision)
        return EvenOddSchur().solve_reduced(self, b_o, solver, x0=x0)

    def solve(self, b, tol: float | None = None, maxiter: int | None = None, on_failure: str | None = None,
              precision: str | None = None, *, solver=None, preconditioner=None):
        """Solve M psi = b (full lattice), by default through the even-odd Schur complement.

        psi_o = M^{-1} (b_o + kappa H_oe A^{-1} b_e), psi_e = A^{-1} (b_e + kappa H_eo psi_o).
        ``tol`` (default 1e-10) is the CG tolerance on the normal equations of the reduced system;
        ``precision`` "double" (default) or "mixed". ``solver`` (:mod:`fermions.solvers`, instead of
        tol/maxiter/on_failure/precision) and ``preconditioner`` (:mod:`fermions.preconditioners`,
        default :class:`EvenOddSchur`) choose the method. The returned :class:`SolveInfo` also
        reports the true residual of the full system, ||b - M psi|| / ||b||, per batch element.
        """
        xp = self.xp
        solver = resolve_solver(solver, tol=tol, maxiter=maxiter, on_failure=on_failure, precision=precision)
        pre = EvenOddSchur() if preconditioner is None else preconditioner
        psi, info = pre.solve(self, b, solver)
        r = b - self.apply(psi)
        lay = self.layout
        rr = lay.sum(xp.real(r * xp.conj(r)), inner=2)
        bb = lay.sum(xp.real(b * xp.conj(b)), inner=2)
        rel = xp.sqrt(rr / xp.where(bb == 0, xp.ones_like(bb), bb))
        res = [float(v) for v in to_host(xp.reshape(rel, (-1,)))]
        return psi, SolveInfo(cg=info, residual=max(res) if res else 0.0, residuals=tuple(res),
                              solver=solver.config(), preconditioner=pre.config())

    # ------------------------------------------------------------------ link derivatives
    def hopping_omega(self, a, b):
        """Omega (gauge layout) with d/dt Re[a^dag H(e^{tX}U) b] = sum_{x,mu} Re tr[X_mu(x) Omega_mu(x)];
        a, b full-lattice spinors (see :mod:`fermions.wilson`). The su(N) gradient of that function
        is :func:`fermions.wilson.force_from_omega` (Omega)."""
        return omega_to_gauge(self.links.omega(to_soa(a), to_soa(b)))

    def schur_omega(self, y_o, x_o):
        """Omega with d/dt Re[y^dag M^(e^{tX}U) x] = sum Re tr[X Omega] for packed odd spinors y, x.

        M^ = A - kappa^2 H_oe A^{-1} H_eo, so d Re[y^dag M^ x] = -kappa^2 d Re[a^dag H b] with the
        full-lattice fields a = (A^{-dag} H_oe^dag y, y) and b = (A^{-1} H_eo x, x) (even, odd);
        H_oe^dag = gamma_5 H_eo gamma_5.
        """
        eo = self.even_odd
        xs, ys = to_soa(x_o), to_soa(y_o)
        z = self._diag(self._hop_eo(xs, 0), self._ainv)                     # A^{-1} H_eo x
        hu, hd = self.links.hop_eo(ys, 0, dagger=True)                       # gamma_5 H_eo gamma_5 y
        ai = self._ainv.conjugate()                                          # A^{-dag} on the upper rows
        w = _cat(ai * hu, ai.conjugate() * hd)                               # A^{-dag} gamma_5 H_eo gamma_5 y
        a = eo.unpack(w, ys, inner=0)
        b = eo.unpack(z, xs, inner=0)
        return (-self.kappa * self.kappa) * omega_to_gauge(self.links.omega(a, b))
