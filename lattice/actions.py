"""Gauge actions with hand-written forces (docs/design.md §5).

All actions here are sums of real traces of closed loops,

    S(U) = -(beta/N) sum_x sum_terms c_term Re tr W_term(x),

so one mechanism (:class:`LoopAction`) provides the action and the force:
d/dt S(exp(tX) U)|_0 = -(beta/N) sum Re tr(X U A) with A the staple sum
(:func:`lattice.loops.path_staples`), i.e. (section 4 convention)

    grad S_mu(x) = (beta / 4N) T[Omega - Omega^dag],   Omega = U_mu(x) A_mu(x).

* Wilson:          c = 1 on every plaquette, mu < nu.
* Luscher-Weisz:   c0 = 1 - 8 c1 = 5/3 on plaquettes, c1 = -1/12 on the 2x1 rectangles
                   R_mu,nu for all mu != nu (tree-level Symanzik). No constant term is added.
* Feynman-Hellmann deformation (paper eq. 16): S_lambda = S + lambda O,
  O = -(beta/N) sum_x Re tr(sum_i P_it - sum_{i<j} P_ij) (plaquettes only; i, j spatial,
  t = last axis): temporal plaquette coefficients get +lambda, spatial ones -lambda.

``action(U)`` and ``operator(U)`` return float64 per batch element.
"""
from __future__ import annotations

from .backend import namespace
from .layout import Layout, infer_gauge_layout
from .fields import links, stack_links
from .loops import plaquette_path, rectangle_path, path_product, path_staples, backward_links
from . import su_n, kernels

__all__ = ["LoopAction", "Wilson", "LuscherWeisz", "action_from_params"]


class LoopAction:
    """S = -(beta/N) sum_x [sum_{mu<nu} c_P(mu,nu) Re tr P_mu,nu + sum_{mu!=nu} c_R Re tr R_mu,nu] + lam O.

    Parameters
    ----------
    beta : gauge coupling.
    c_plaq, c_rect : plaquette and rectangle coefficients.
    lam : Feynman-Hellmann coupling lambda of eq. (14)/(16).
    """

    name = "loop"

    def __init__(self, beta: float, c_plaq: float = 1.0, c_rect: float = 0.0, lam: float = 0.0):
        self.beta = float(beta)
        self.c_plaq = float(c_plaq)
        self.c_rect = float(c_rect)
        self.lam = float(lam)

    # ------------------------------------------------------------------ description
    def params(self) -> dict:
        return {"name": self.name, "beta": self.beta, "c_plaq": self.c_plaq, "c_rect": self.c_rect,
                "lam": self.lam}

    def __repr__(self):
        return f"{type(self).__name__}(beta={self.beta}, lam={self.lam})"

    def with_lam(self, lam: float) -> "LoopAction":
        """The same action at another Feynman-Hellmann coupling."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.lam = float(lam)
        return new

    def terms(self, Nd: int, N: int, lam: float | None = None, with_base: bool = True):
        """(weight, path) list with weights already multiplied by -beta/N."""
        lam = self.lam if lam is None else lam
        pref = -self.beta / N
        t = Nd - 1
        out = []
        for mu in range(Nd):
            for nu in range(mu + 1, Nd):
                c = (self.c_plaq if with_base else 0.0) + lam * (1.0 if nu == t else -1.0)
                if c:
                    out.append((pref * c, plaquette_path(mu, nu)))
        if with_base and self.c_rect:
            for mu in range(Nd):
                for nu in range(Nd):
                    if mu != nu:
                        out.append((pref * self.c_rect, rectangle_path(mu, nu)))
        return out

    # ------------------------------------------------------------------ evaluation
    def _loop_sum(self, U, terms, layout):
        xp = namespace(U)
        Ul = links(U, layout)
        lk = (Ul, backward_links(Ul, layout))
        dens = None
        for w, path in terms:
            # Re tr W(x) = Re sum_ij F_ij(x) [rest](x)_ji: avoids the last product
            first, rest = path[0], path[1:]
            m, s = first
            F = lk[0][m] if s > 0 else lk[1][m]
            R = layout.shift(path_product(U, rest, layout, _links=lk), m, s)
            tr = xp.real(xp.sum(F * xp.matrix_transpose(R), axis=(-2, -1)))
            d = w * xp.astype(tr, xp.float64)
            dens = d if dens is None else dens + d
        if dens is None:
            return xp.zeros(U.shape[: U.ndim - layout.Nd - 3], dtype=xp.float64)
        return layout.sum(dens)

    def action(self, U, layout: Layout | None = None):
        """S(U) per batch element, float64."""
        layout = infer_gauge_layout(U, layout)
        return self._loop_sum(U, self.terms(layout.Nd, U.shape[-1]), layout)

    def operator(self, U, layout: Layout | None = None):
        """The Feynman-Hellmann operator O(U) of eq. (16), dS_lambda/dlambda, per batch element."""
        layout = infer_gauge_layout(U, layout)
        return self._loop_sum(U, self.terms(layout.Nd, U.shape[-1], lam=1.0, with_base=False), layout)

    def force(self, U, layout: Layout | None = None):
        """grad S (su(N)-valued, same shape as U): d/dt S(e^{tX}U)|_0 = sum <grad S, X>."""
        layout = infer_gauge_layout(U, layout)
        terms = self.terms(layout.Nd, U.shape[-1])
        A = path_staples(U, terms, layout)
        Ul = links(U, layout)
        F = []
        for mu in range(layout.Nd):
            Om = kernels.matmul(Ul[mu], A[mu])
            # S = sum Re tr(U A) => grad S = -1/4 T[Omega - Omega^dag] (weights carry -beta/N)
            F.append(-0.25 * su_n.traceless(Om - su_n.dagger(Om)))
        return stack_links(F, layout)

    def operator_force(self, U, layout: Layout | None = None):
        """grad O, the force of the Feynman-Hellmann operator alone."""
        layout = infer_gauge_layout(U, layout)
        terms = self.terms(layout.Nd, U.shape[-1], lam=1.0, with_base=False)
        A = path_staples(U, terms, layout)
        Ul = links(U, layout)
        F = []
        for m in range(layout.Nd):
            Om = kernels.matmul(Ul[m], A[m])
            F.append(-0.25 * su_n.traceless(Om - su_n.dagger(Om)))
        return stack_links(F, layout)

    def log_prob(self, U, layout: Layout | None = None):
        """Unnormalised log density -S(U)."""
        return -self.action(U, layout)


class Wilson(LoopAction):
    """Wilson plaquette action S_W = -(beta/N) sum_x sum_{mu<nu} Re tr P_mu,nu(x) (+ lam O)."""

    name = "wilson"

    def __init__(self, beta: float, lam: float = 0.0):
        super().__init__(beta, c_plaq=1.0, c_rect=0.0, lam=lam)


class LuscherWeisz(LoopAction):
    """Tree-level Symanzik (Luscher-Weisz) action, c1 = -1/12, c0 = 1 - 8 c1 (+ lam O)."""

    name = "luscher_weisz"

    def __init__(self, beta: float, lam: float = 0.0, c1: float = -1.0 / 12.0):
        super().__init__(beta, c_plaq=1.0 - 8.0 * c1, c_rect=c1, lam=lam)
        self.c1 = float(c1)


def action_from_params(p: dict) -> LoopAction:
    """Rebuild an action from its :meth:`LoopAction.params` dict, e.g. the action an ensemble
    file records: ``action_from_params(EnsembleStore.open(path).action)`` gives an equal
    :class:`Wilson`, :class:`LuscherWeisz` or :class:`LoopAction` (same ``params()``)."""
    name = p.get("name")
    if name == "wilson":
        return Wilson(p["beta"], lam=p.get("lam", 0.0))
    if name == "luscher_weisz":
        c1 = p.get("c_rect", -1.0 / 12.0)
        return LuscherWeisz(p["beta"], lam=p.get("lam", 0.0), c1=c1)
    if name == "loop":
        return LoopAction(p["beta"], p.get("c_plaq", 1.0), p.get("c_rect", 0.0), p.get("lam", 0.0))
    raise ValueError(f"unknown gauge action {name!r}; known: wilson, luscher_weisz, loop")
