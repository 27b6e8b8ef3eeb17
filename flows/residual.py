"""Residual gauge-equivariant layers: U'_mu(x) = exp(X_mu(x)) U_mu(x) on the active links.

The marginal (gauge-field) model of the correlated-ensemble flows of the reference paper's
section 3 (architecture of Abbott et al., arXiv:2401.10874). On the active links of a
direction-type mask (the M2 / M4 checkerboards of :mod:`flows.masks`, or the plain direction
masks) of direction mu,

    U'_mu(x) = exp(X(x)) U_mu(x),      X(x) = P_TA( U_mu(x) Xi(x)^dag ),            (R1)
    Xi(x)    = sum_k c_k(x) Sigma_k(x),                                              (R2)

P_TA(M) = (M - M^dag)/2 - tr(M - M^dag)/(2N) the traceless anti-Hermitian part, Sigma_k
untraced staple sums (transforming like U_mu(x)) of the loop *terms* k of the layer, built
from frozen links only, and c_k(x) real coefficients. Frozen links are unchanged.

**Terms.** A loop family ("plaquette", "rectangle", "chair"; :func:`family_paths`) is split
by plane type -- loops that extend in the time direction ("temporal") or not ("spatial") --
and the layer's active direction fixes the link type (temporal for mu = Nd - 1), because
the Feynman-Hellmann operator (paper eq. 16) weighs temporal and spatial plaquettes with
opposite signs. A temporal link has temporal terms only; so a plaquette-only layer has one
term on temporal links and two on spatial links (three classes over a pass, the issue's
"3 constants").

**Coefficients.** c_k(x) = c_max,k tanh(a_k + h_k(x)): a learned dimensionless constant a_k
per term and, with ``field_dependent=True``, h_k(x) from a :class:`flows.ContextNet` of
gauge-invariant features of loops made of frozen links only (its exclusion mask is the
layer's active mask, so h does not depend on any active link). The context head starts at
zero and the constants at zero: the layer starts as the identity. The bound
c_max,k = rho / (n_terms n_k) (n_k the number of loops in term k, each staple an SU(N)
matrix of operator norm 1) gives ||Xi|| <= rho (``bound``, default 0.5) and so a
contraction for the inverse (below).

**Jacobian (exact).** Perturb the active link U -> e^Z U, Z in su(N) (left-trivialised
coordinates z^a = <T^a, Z>). Then M = U Xi^dag -> e^Z M, X -> X + D Z with
D Z = P_TA(Z M), and with d exp_X(delta) = [(e^{ad X} - 1)/ad X delta] e^X,

    z' = e^{ad X} (1 + phi(ad X) D) z,      phi(A) = (1 - e^{-A}) / A,              (R3)
    D_ab = <T^a, P_TA(T^b M)> = -2 Re tr(T^a T^b M),   (ad X)_ab = <T^a, [X, T^b]>.

Each active link's image depends on itself and frozen links, so the Jacobian of the layer is
block triangular with these (N^2-1) x (N^2-1) blocks, and since e^{ad X} is orthogonal
(det = 1),

    log |det J| = sum_active log det(1 + phi(ad X) D)                                  (R4)

exactly (float64, 8 x 8 determinants for SU(3)). ||D|| <= ||Xi|| <= rho < 1 and
||phi(ad X)|| <= 1, so the determinant is positive. phi(ad X) and its adjoint are the kernel
layer's derivative map of exp (:func:`lattice.kernels.phi_ad`, eqs. (D1)-(D3)): the Taylor series
in Horner form with the fewest terms K whose remainder bound a^(K+1)/(K+2)! / (1 - a/(K+3)) is
below ``PHI_SERIES_TOL`` = 1e-17, a = max ||ad X||_F over the batch (:func:`phi_terms`: 17 terms
for ||ad X||_F <= 1, 6-9 near the identity where training starts).

**Inverse** by the fixed-point iteration U <- exp(-X(U)) U' (Xi depends on frozen links only,
which the layer does not change), a contraction with constant <= rho (e - 1) < 1 for
rho <= 0.5; iterated to max |dU| < ``INVERSE_TOL`` = 1e-13, a :class:`ResidualInverseError`
when it does not converge.

**VJPs** (complex cotangents as in docs/design.md §7). Forward: with g'^b = Re tr(T^b U' Ubar'^dag)
the left-trivialised cotangent of U', x_bar = phi(ad X) g' (since [(e^A - 1)/A]^T = phi(A)
for antisymmetric A), the log-det adds J_bar = ldbar J^{-T}, Phi_bar = J_bar D^T,
D_bar = Phi^T J_bar and A_bar by the Horner recursion backwards; then
M_bar = 2 sum_a x_bar_a T^a - 2 sum_ab D_bar_ab (T^a T^b)^dag, U_bar = e^{X dag} Ubar' + M_bar Xi,
Xi_bar = M_bar^dag U -- the exact complex gradient. Inverse: the cotangent of U (plus the
log-det term) in left coordinates g_U is carried to V by g_V = e^{ad X} J^{-T} g_U (from
(R3)); the implicit dependence through Xi adds Xi_bar = -(dV/dXi)^T g_V. Inverse cotangents
are valid for perturbations along the group (as for every layer).

**Linear response.** At c = 0, d log w / d c_k = F_k with log w = log p(f(U)) - log r(U) +
log J, and (first order of (R1) and (R4); tr D = 2 C_F Re tr M, C_F = (N^2 - 1)/2N)

    F_k(U) = sum_active [ 2 C_F Re tr(U Sigma_k^dag) - <grad S_target, P_TA(U Sigma_k^dag)> ]
           = sum_active 2 Re tr((C_F + G) U Sigma_k^dag),   G = grad(-log p) (an su(N) force),

(:meth:`ResidualLayer.linear_response`; :mod:`flows.linear_response` fits the constants).

Shapes: U ``(*batch, Nd, *sites, N, N)``; log-dets float64 ``(*batch,)``. The per-link
algebra runs in complex128/float64 whatever the field's dtype.
"""
from __future__ import annotations

import math
from functools import lru_cache

from lattice.backend import namespace
from lattice.layout import Layout
from lattice.fields import links, stack_links
from lattice import su_n, kernels
from lattice.kernels.dexp import phi_terms, PHI_SERIES_TOL

from .masks import LayerMask, paths_avoid_active
from .module import Module, add_grads, prefixed, sub_params
from .paths import paths_fwd, paths_vjp, staple_lines
from .context import ContextNet
from .layers import checked_layout
from .active import ActiveSites, gather_active, scatter_active, scatter_density
from .protocol import MaskedLayer, register_layer
from .model import Flow, _CLASSES

__all__ = ["ResidualLayer", "ResidualFlow", "residual_flow", "ResidualInverseError", "family_paths", "residual_terms", "LOOP_FAMILIES",
           "phi_terms", "PHI_SERIES_TOL", "INVERSE_TOL"]

LOOP_FAMILIES = ("plaquette", "rectangle", "chair")
INVERSE_TOL = 1e-13
INVERSE_MAXITER = 200


class ResidualInverseError(RuntimeError):
    """The fixed-point inverse of a residual layer did not converge."""


# ---------------------------------------------------------------------- loop families
def family_paths(family: str, mu: int, Nd: int):
    """S^dag paths (from x + mu^ back to x, see :func:`flows.layers.fixed_staple_path`) of the
    loops of ``family`` through the mu-link at x, each with the set of directions it uses.

    * plaquette: for nu != mu, s = +-1: (nu,s), (mu,-1), (nu,-s)  [2(Nd-1) loops];
    * rectangle (2x1): long in mu forwards (mu,+1),(nu,s),(mu,-1),(mu,-1),(nu,-s), long in mu
      backwards (nu,s),(mu,-1),(mu,-1),(nu,-s),(mu,+1), long in nu
      (nu,s),(nu,s),(mu,-1),(nu,-s),(nu,-s)  [6(Nd-1) loops];
    * chair (6 links, two orthogonal plaquettes sharing an edge): for ordered pairs nu != rho
      (both != mu) and signs s, t: bent at x, (nu,s),(mu,-1),(rho,t),(nu,-s),(rho,-t), and bent
      at x + mu^, (rho,t),(nu,s),(rho,-t),(mu,-1),(nu,-s). Their second mu-link sits at
      x + s nu^. The chairs bent along mu (second mu-link at x + s nu^ + t rho^) are left out:
      for t = -s that link has the same M2/M4 mask value as x, so it may be active.
    """
    mu, Nd = int(mu), int(Nd)
    others = [nu for nu in range(Nd) if nu != mu]
    out = []
    if family == "plaquette":
        for nu in others:
            for s in (1, -1):
                out.append((((nu, s), (mu, -1), (nu, -s)), {mu, nu}))
    elif family == "rectangle":
        for nu in others:
            for s in (1, -1):
                out.append((((mu, 1), (nu, s), (mu, -1), (mu, -1), (nu, -s)), {mu, nu}))
                out.append((((nu, s), (mu, -1), (mu, -1), (nu, -s), (mu, 1)), {mu, nu}))
                out.append((((nu, s), (nu, s), (mu, -1), (nu, -s), (nu, -s)), {mu, nu}))
    elif family == "chair":
        for nu in others:
            for rho in others:
                if rho == nu:
                    continue
                for s in (1, -1):
                    for t in (1, -1):
                        out.append((((nu, s), (mu, -1), (rho, t), (nu, -s), (rho, -t)), {mu, nu, rho}))
                        out.append((((rho, t), (nu, s), (rho, -t), (mu, -1), (nu, -s)), {mu, nu, rho}))
    else:
        raise ValueError(f"unknown loop family {family!r}; use one of {LOOP_FAMILIES}")
    return out


def residual_terms(mu: int, Nd: int, families=("plaquette",)):
    """The terms of a residual layer on mu-links: a list of dicts with ``key``
    ("family/plane-type/link-type", the class that the linear-response fit ties across
    layers) and ``paths``. Time is direction Nd - 1; empty terms are dropped."""
    t = Nd - 1
    link = "temporal" if mu == t else "spatial"
    terms = []
    for fam in families:
        by_plane = {"temporal": [], "spatial": []}
        for path, dirs in family_paths(fam, mu, Nd):
            by_plane["temporal" if t in dirs else "spatial"].append(path)
        for plane in ("temporal", "spatial"):
            if by_plane[plane]:
                terms.append({"key": f"{fam}/{plane}-plane/{link}-link", "paths": by_plane[plane]})
    return terms


# ---------------------------------------------------------------------- su(N) algebra tables
@lru_cache(maxsize=None)
def _tables(N: int, xp_name: str):
    """The ad matrices F (n, n*n) with (ad T^c)_ab = F[c, a*n + b], and the products
    Q = T^a T^b flattened (n*n, N*N) and their daggers (n*n, N*N), n = N^2 - 1."""
    from lattice.backend import get_namespace
    xp = get_namespace(xp_name)
    T = su_n.generators(N, xp)                                # complex128
    n = N * N - 1
    TT = T[:, None, :, :] @ T[None, :, :, :]                  # (c, b): T^c T^b
    comm = TT - xp.permute_dims(TT, (1, 0, 2, 3))            # [T^c, T^b]
    coords = su_n.to_coords(comm)                             # (c, b, a) = <T^a, [T^c, T^b]>
    F = xp.reshape(xp.permute_dims(coords, (0, 2, 1)), (n, n * n))
    Q = xp.reshape(TT, (n * n, N * N))                        # (a, b) -> T^a T^b
    Qd = xp.reshape(su_n.dagger(TT), (n * n, N * N))
    return F, Q, Qd


def _tab(N, xp):
    """:func:`_tables` in the namespace ``xp`` (cached by its short name)."""
    return _tables(N, getattr(xp, "__name__", "numpy").split(".")[-1])


def _vec_t(M):
    """vec(M^T): (..., N, N) -> (..., N*N) with entry (i, j) -> M_ji, so that
    tr(B M) = sum_ij B_ij M_ji = vec(B) . vec(M^T)."""
    xp = namespace(M)
    return xp.reshape(xp.matrix_transpose(M), M.shape[:-2] + (M.shape[-1] * M.shape[-1],))


def link_algebra(M):
    """Per-link quantities of (R1)-(R4) from M = U Xi^dag (complex128, (..., N, N)):
    coordinates x of X = P_TA(M), A = ad X, phi(A) with what its adjoint needs, D, the
    inverse of J = 1 + phi(A) D and log det J (float64)."""
    xp = namespace(M)
    N = M.shape[-1]
    n = N * N - 1
    F, Q, Qd = _tab(N, xp)
    x = su_n.to_coords(M)                                             # (..., n)
    A = xp.reshape(x @ F, x.shape[:-1] + (n, n))
    Phi, Ps = kernels.phi_ad(A)
    D = -2.0 * xp.real(xp.reshape(_vec_t(M) @ xp.matrix_transpose(Q), x.shape[:-1] + (n, n)))
    J = xp.eye(n, dtype=xp.float64) + Phi @ D                         # det J > 0 (||phi D|| <= rho < 1)
    ld = xp.linalg.slogdet(J)[1]
    return dict(x=x, A=A, Phi=Phi, Ps=Ps, D=D, Jinv=xp.linalg.inv(J), ld=ld, X=su_n.from_coords(x, N))


def link_algebra_vjp(alg, x_bar=None, ld_bar=None):
    """Cotangent of M (complex, docs/design.md §7) from those of x (coordinates of X) and of
    log det J (per link, real)."""
    xp = namespace(alg["A"])
    N = alg["X"].shape[-1]
    n = N * N - 1
    F, Q, Qd = _tab(N, xp)
    M_bar = None
    if ld_bar is not None:
        Jb = ld_bar[..., None, None] * xp.matrix_transpose(alg["Jinv"])
        Phi_b = Jb @ xp.matrix_transpose(alg["D"])
        D_b = xp.matrix_transpose(alg["Phi"]) @ Jb
        A_b = kernels.phi_ad_vjp(alg["A"], alg["Ps"], Phi_b)
        xa = xp.reshape(A_b, A_b.shape[:-2] + (n * n,)) @ xp.matrix_transpose(F)
        x_bar = xa if x_bar is None else x_bar + xa
        Db = xp.astype(xp.reshape(D_b, D_b.shape[:-2] + (n * n,)), xp.complex128)
        M_bar = -2.0 * xp.reshape(Db @ Qd, D_b.shape[:-2] + (N, N))
    if x_bar is not None:
        Mx = 2.0 * su_n.from_coords(x_bar, N)
        M_bar = Mx if M_bar is None else M_bar + Mx
    return M_bar


def _left_coords(U, U_bar):
    """g^b = Re tr(T^b U U_bar^dag): the cotangent of U for U -> e^Z U in coordinates z^b."""
    return -0.5 * su_n.to_coords(U @ su_n.dagger(U_bar))


def _matvec(A, v):
    return (A @ v[..., None])[..., 0]


# ---------------------------------------------------------------------- the layer
@register_layer
class ResidualLayer(MaskedLayer, Module):
    """One residual layer (module docstring).

    Parameters
    ----------
    mask : a direction-type :class:`flows.masks.LayerMask` ("checker" M2/M4 or "direction");
        every loop of ``families`` must avoid its other active links (checked per layout).
    Nd, N : lattice dimensions and SU(N).
    families : loop families of the staple terms (subset of ``LOOP_FAMILIES``).
    field_dependent : add the context-network part h_k(x) to the constants.
    context_hidden, context_kernel, context_loops, context_activation : its ContextNet.
    bound : rho, the bound on ||Xi|| (0 < rho <= 0.5).
    """

    layer_type = "residual"

    def __init__(self, mask: LayerMask, Nd: int, N: int, families=("plaquette",), *, field_dependent: bool = False,
                 context_hidden=(8,), context_kernel: int = 3, context_loops=("plaquette",),
                 context_activation: str = "tanh", bound: float = 0.5):
        if mask.kind not in ("checker", "direction"):
            raise ValueError(f"residual layers need a one-direction mask (M2/M4 'checker' or 'direction'), got "
                             f"{mask.kind!r}")
        families = tuple(families)
        bad = [f for f in families if f not in LOOP_FAMILIES]
        if bad or not families:
            raise ValueError(f"residual loop families must be a non-empty subset of {LOOP_FAMILIES}, got {families}")
        if not 0.0 < float(bound) <= 0.5:
            raise ValueError(f"residual coefficient bound must lie in (0, 0.5] (contraction of the inverse), got {bound}")
        self.mask, self.Nd, self.N = mask, int(Nd), int(N)
        self.mu = int(mask.mu)
        if not 0 <= self.mu < self.Nd:
            raise ValueError(f"mask direction mu = {self.mu} out of range for Nd = {self.Nd}")
        self.families, self.field_dependent, self.bound = families, bool(field_dependent), float(bound)
        self.terms = residual_terms(self.mu, self.Nd, families)
        self.paths = [p for t in self.terms for p in t["paths"]]
        nt = len(self.terms)
        self.c_max = [self.bound / (nt * len(t["paths"])) for t in self.terms]
        self.context = None
        if self.field_dependent:
            self.context = ContextNet(self.Nd, n_out=nt, hidden=tuple(context_hidden), kernel_size=context_kernel,
                                      loops=tuple(context_loops), activation=context_activation)
        self._cfg = dict(families=list(families), field_dependent=self.field_dependent,
                         context_hidden=[int(h) for h in context_hidden], context_kernel=int(context_kernel),
                         context_loops=list(context_loops), context_activation=context_activation,
                         bound=self.bound)
        self._sites = {}
        self._lines = {}

    # ------------------------------------------------------------------ parameters
    @property
    def term_keys(self) -> list:
        return [t["key"] for t in self.terms]

    def config(self) -> dict:
        return {"mask": self.mask.as_dict(), "Nd": self.Nd, "N": self.N, **self._cfg}

    @classmethod
    def from_config(cls, cfg: dict) -> "ResidualLayer":
        cfg = dict(cfg)
        mask = LayerMask.from_dict(cfg.pop("mask"))
        return cls(mask, cfg.pop("Nd"), cfg.pop("N"), cfg.pop("families"), **cfg)

    def param_shapes(self) -> dict:
        out = {"coef": (len(self.terms),)}
        if self.context is not None:
            out.update(prefixed("context", self.context.param_shapes()))
        return out

    def init(self, rng, gain: float = 0.5) -> dict:
        """Identity start: zero constants and (with field dependence) a zero context head."""
        xp = rng.xp
        params = {"coef": xp.zeros((len(self.terms),), dtype=xp.float64)}
        if self.context is not None:
            params.update(prefixed("context", self.context.init(rng.child(1))))
        return params

    def describe(self) -> str:
        return (f"{self.mask.describe()} residual terms={len(self.terms)} ({', '.join(self.families)})"
                + (" field-dependent" if self.field_dependent else ""))

    def coefficients(self, params):
        """The constant parts c_k = c_max,k tanh(a_k) (host floats)."""
        from lattice.backend import to_host
        a = to_host(params["coef"])
        return [cm * math.tanh(float(a[k])) for k, cm in enumerate(self.c_max)]

    def raw_from_coefficients(self, c, xp, clip: float = 0.95):
        """Parameters a_k with c_max tanh(a_k) = c_k (|c_k| clipped to ``clip`` c_max);
        returns (array, list of the k that were clipped)."""
        out, clipped = [], []
        for k, (ck, cm) in enumerate(zip(c, self.c_max)):
            r = float(ck) / cm
            if abs(r) > clip:
                clipped.append(k)
                r = math.copysign(clip, r)
            out.append(math.atanh(r))
        return xp.asarray(out, dtype=xp.float64), clipped

    # ------------------------------------------------------------------ geometry
    def sites(self, layout: Layout, xp) -> ActiveSites:
        key = (layout, getattr(xp, "__name__", id(xp)))
        s = self._sites.get(key)
        if s is None:
            s = ActiveSites(self.mask, layout, xp, dirs=[self.mu])
            hit = paths_avoid_active(self.mask, self.mu, self.paths, layout, xp)
            if hit is not None:
                raise ValueError(
                    f"residual layer [{self.mask.describe()}] with families {self.families}: the loop path "
                    f"{hit[0]} uses another active link (step {hit[1]}), so the layer would not be triangular. "
                    f"2x1 rectangles need M4 masks; use families ('plaquette', 'chair') with M2.")
            self._sites[key] = s
        return s

    # ------------------------------------------------------------------ internals
    def _frozen(self, params, X, layout, s):
        """Staple sums Sigma_k and coefficients c_k at the active links (gathered): they depend
        on frozen links only, so they are the same for U and U' = f(U)."""
        xp = namespace(X)
        nb = X.ndim - self.Nd - 3
        mu, N = self.mu, self.N
        lines = self._line_set(layout, s)
        Sig, wctx, Xe = [], None, None
        if lines is not None:                                       # at the active links only
            Xe = lines.links(X)
            Sig = [xp.astype(su_n.dagger(W), xp.complex128) for W in lines.sums(Xe)]
        else:                                                       # paths beyond the neighbour block
            Ws, wctx = paths_fwd(links(X, layout), self.paths, layout)
            j = 0
            for t in self.terms:
                W = Ws[j]
                for W2 in Ws[j + 1:j + len(t["paths"])]:
                    W = W + W2
                j += len(t["paths"])
                Sd = gather_active(layout.shift(W, mu, +1), s, mu, nb, (N, N))
                Sig.append(xp.astype(su_n.dagger(Sd), xp.complex128))
        coef = xp.astype(params["coef"], xp.float64)
        cmax = xp.asarray(self.c_max, dtype=xp.float64)
        if self.context is not None:
            (h_full,), cctx = self.context.forward(sub_params("context", params), X, s.m, layout=layout)
            h = xp.astype(gather_active(h_full, s, mu, nb, (len(self.terms),)), xp.float64)
            z = coef + h                                            # (*batch, n_act, n_terms)
        else:
            cctx = None
            z = xp.reshape(coef, (1,) * (nb + 1) + (len(self.terms),))
        th = xp.tanh(z)
        c = cmax * th                                               # c_k(x)
        Xi = None
        for k, S in enumerate(Sig):
            term = c[..., k][..., None, None] * S
            Xi = term if Xi is None else Xi + term
        n_act = s.n_active[mu]
        Xi = xp.broadcast_to(Xi, tuple(X.shape[:nb]) + (n_act, N, N))
        return dict(Sig=Sig, c=c, dc=cmax * (1.0 - th * th), Xi=Xi, wctx=wctx, lines=lines, Xe=Xe, cctx=cctx, nb=nb)

    def _line_set(self, layout, s):
        """The :class:`flows.paths.LineSet` of the terms' staple sums at the active links
        (:func:`flows.paths.staple_lines`; None where a loop reaches beyond the neighbouring
        block of a split axis), cached per layout."""
        if layout not in self._lines:
            self._lines[layout] = staple_lines(layout, s.idx[self.mu], self.mu, [t["paths"] for t in self.terms])
        return self._lines[layout]

    def _fixed_point(self, V, Xi):
        """U with exp(X(U)) U = V, X(U) = P_TA(U Xi^dag), by U <- exp(-X(U)) V."""
        xp = namespace(V)
        U = V
        for it in range(INVERSE_MAXITER):
            Un = su_n.expm(-su_n.project_algebra(U @ su_n.dagger(Xi))) @ V
            err = float(xp.max(xp.abs(Un - U)))
            U = Un
            if err < INVERSE_TOL:
                return U
            if not math.isfinite(err):
                break
        raise ResidualInverseError(
            f"residual layer [{self.mask.describe()}]: the fixed-point inverse did not converge in "
            f"{INVERSE_MAXITER} iterations (last change {err:.2e} > {INVERSE_TOL:.0e}); the input is probably not "
            f"an SU({self.N}) field in the image of this layer, or the coefficients exceed their bound")

    def _apply(self, params, Xf, layout, inverse: bool):
        layout = checked_layout(Xf, layout, self.Nd, self.N, "residual layer")
        xp = namespace(Xf)
        s = self.sites(layout, xp)
        fr = self._frozen(params, Xf, layout, s)
        nb, mu, N = fr["nb"], self.mu, self.N
        out_links = list(links(Xf, layout))
        Xa = xp.astype(gather_active(out_links[mu], s, mu, nb, (N, N)), xp.complex128)
        if inverse:
            V = Xa
            U = self._fixed_point(V, fr["Xi"])
        else:
            U = Xa
        alg = link_algebra(U @ su_n.dagger(fr["Xi"]))
        E = su_n.expm(alg["X"])
        if not inverse:
            V = E @ U
        Y = U if inverse else V
        out_links[mu] = scatter_active(xp.astype(Y, Xf.dtype), s, mu, nb, out_links[mu])
        ld = layout.sum(scatter_density(alg["ld"], s, mu, nb))
        if inverse:
            ld = -ld
        ctx = dict(layout=layout, sites=s, fr=fr, alg=alg, E=E, U=U, V=V, dtype=Xf.dtype, shape=tuple(Xf.shape))
        return (stack_links(out_links, layout), ld), ctx

    def _backward(self, params, ctx, Y_bar, ld_bar, inverse: bool, need_params: bool):
        layout, s, fr, alg = ctx["layout"], ctx["sites"], ctx["fr"], ctx["alg"]
        nb, mu, N = fr["nb"], self.mu, self.N
        U, V, E, Xi = ctx["U"], ctx["V"], ctx["E"], fr["Xi"]
        xp = namespace(U)
        if Y_bar is None:
            Y_bar = xp.zeros(ctx["shape"], dtype=ctx["dtype"])
        Ybl = list(links(Y_bar, layout))
        Yb = xp.astype(gather_active(Ybl[mu], s, mu, nb, (N, N)), xp.complex128)
        lb = None
        if ld_bar is not None:
            lb = xp.astype(ld_bar, xp.float64)
            lb = xp.broadcast_to(xp.reshape(lb, tuple(lb.shape) + (1,)), tuple(Yb.shape[:nb + 1]))
        if not inverse:
            g = _left_coords(V, Yb)
            M_bar = link_algebra_vjp(alg, _matvec(alg["Phi"], g), lb)
            X_bar = su_n.dagger(E) @ Yb + M_bar @ Xi
            Xi_bar = su_n.dagger(M_bar) @ U
        else:
            Utot = Yb
            Xi_bar = None
            if lb is not None:
                M_l = link_algebra_vjp(alg, None, -lb)
                Utot = Utot + M_l @ Xi
                Xi_bar = su_n.dagger(M_l) @ U
            gU = _left_coords(U, Utot)
            w = _matvec(xp.matrix_transpose(alg["Jinv"]), gU)
            gV = su_n.to_coords(E @ su_n.from_coords(w, N) @ su_n.dagger(E))
            X_bar = 2.0 * su_n.from_coords(gV, N) @ V
            M_impl = 2.0 * su_n.from_coords(_matvec(alg["Phi"], gV), N)
            Xi_i = -(su_n.dagger(M_impl) @ U)
            Xi_bar = Xi_i if Xi_bar is None else Xi_bar + Xi_i
        in_links = list(Ybl)
        in_links[mu] = scatter_active(xp.astype(X_bar, ctx["dtype"]), s, mu, nb, Ybl[mu])
        # Xi = sum_k c_k Sigma_k
        grads = {}
        c, Sig = fr["c"], fr["Sig"]
        dtype = ctx["dtype"]
        Sd_bars, W_bars, z_bar = [], [], []
        for k, t in enumerate(self.terms):
            ck = c[..., k][..., None, None]
            Sd_bar = xp.astype(su_n.dagger(ck * Xi_bar), dtype)     # cotangent of Sigma_k^dag
            if fr["lines"] is not None:
                Sd_bars.append(Sd_bar)
            else:
                W_bars += [layout.shift(scatter_active(Sd_bar, s, mu, nb), mu, -1)] * len(t["paths"])
            cb = xp.real(xp.sum(xp.conj(Xi_bar) * Sig[k], axis=(-2, -1)))   # Re tr(Xi_bar^dag Sigma_k)
            z_bar.append(cb * fr["dc"][..., k])
        if fr["lines"] is not None:
            out = fr["lines"].vjp(fr["Xe"], Sd_bars, out=stack_links(in_links, layout))
        else:
            for nu, b in enumerate(paths_vjp(fr["wctx"], W_bars)):
                if b is not None:
                    in_links[nu] = in_links[nu] + b
            out = stack_links(in_links, layout)
        zb = xp.stack(z_bar, axis=-1)                               # (*batch, n_act, n_terms)
        if need_params:
            grads["coef"] = xp.sum(xp.reshape(zb, (-1, len(self.terms))), axis=0)
        if self.context is not None:
            hb = scatter_active(zb, s, mu, nb)
            (Uc, _), g = self.context.vjp(sub_params("context", params), fr["cctx"], hb, need_params=need_params)
            if need_params:
                add_grads(grads, g, "context")
            out = out + Uc
        return (out,), grads

    # ------------------------------------------------------------------ linear response
    def linear_response(self, params, U, force, layout: Layout | None = None):
        """F_k(U) = d log w / d c_k at c = 0 (module docstring), float64 (*batch, n_terms):
        sum over the active links of 2 Re tr((C_F + G) U Sigma_k^dag), G = ``force`` the su(N)
        gradient of -log p_target at U (shape of U)."""
        layout = checked_layout(U, layout, self.Nd, self.N, "residual layer")
        xp = namespace(U)
        s = self.sites(layout, xp)
        fr = self._frozen(params, U, layout, s)
        nb, mu, N = fr["nb"], self.mu, self.N
        Ua = xp.astype(gather_active(links(U, layout)[mu], s, mu, nb, (N, N)), xp.complex128)
        Ga = xp.astype(gather_active(links(force, layout)[mu], s, mu, nb, (N, N)), xp.complex128)
        CF = (N * N - 1) / (2.0 * N)
        B = Ga + CF * su_n.eye_like(Ga)
        cols = []
        for S in fr["Sig"]:
            per = 2.0 * xp.real(su_n.trace(B @ Ua @ su_n.dagger(S)))
            cols.append(layout.sum(scatter_density(per, s, mu, nb)))
        return xp.stack(cols, axis=-1)


class ResidualFlow(Flow):
    """The residual marginal model: a :class:`flows.model.Flow` of :class:`ResidualLayer` s on
    the masks of :func:`flows.masks.residual_schedule` (default the paper's 48 layers M2, M4,
    M2, M4 in 4d).

    ``ResidualFlow(Nd, N, config=ResidualFlowConfig(...))``, or with the settings as keywords
    (``ResidualFlow(Nd, N, masks=("M2", "M4"), families=("plaquette", "rectangle"))``), which
    build the :class:`flows.ResidualFlowConfig` (the one definition of the options, also of TOML
    ``[flow] kind = "residual"``). ``families`` are the staple terms of every layer; 2x1
    rectangles are not frozen on M2 layers (:mod:`flows.masks`), so M2 layers use ``families``
    without them. ``config()`` is ``{Nd, N}`` plus the settings (files name the class
    "ResidualFlow"; files written before it existed hold the per-layer "Flow" form and load as
    a plain :class:`Flow` with the same layers).
    """

    def __init__(self, Nd: int, N: int, *, config=None, **settings):
        from .config import ResidualFlowConfig
        from .masks import residual_schedule
        config = ResidualFlowConfig.resolve(config, settings, "ResidualFlow")
        self.settings = c = config
        Nd, N = int(Nd), int(N)
        layers = []
        for m in residual_schedule(Nd, c.masks):
            fams = tuple(f for f in c.families if not (f == "rectangle" and m.modulus == 2)) or ("plaquette",)
            layers.append(ResidualLayer(m, Nd, N, fams, field_dependent=c.field_dependent,
                                        context_hidden=c.context_hidden, context_kernel=c.context_kernel,
                                        context_loops=c.context_loops, context_activation=c.context_activation,
                                        bound=c.bound))
        super().__init__(layers, Nd=Nd, N=N, dtype=c.dtype, recompute=c.recompute)

    def config(self) -> dict:
        """``{"Nd", "N"}`` and the settings (``context_channels`` resolved into ``context_hidden``)."""
        d = {k: v for k, v in self.settings.as_dict().items() if k != "context_channels"}
        return {"Nd": self.Nd, "N": self.N, **d}

    @classmethod
    def from_config(cls, cfg: dict) -> "ResidualFlow":
        from .config import ResidualFlowConfig
        cfg = dict(cfg)
        Nd, N = cfg.pop("Nd"), cfg.pop("N")
        return cls(Nd, N, config=ResidualFlowConfig.from_dict(cfg))


_CLASSES["ResidualFlow"] = ResidualFlow


def residual_flow(Nd: int, N: int, pattern=None, families=None, *, config=None, **settings) -> ResidualFlow:
    """:class:`ResidualFlow` with the mask pattern (``pattern``, the setting ``masks``) and loop
    families as optional positional arguments; the other settings as keywords (defaults:
    :class:`flows.ResidualFlowConfig`)."""
    if pattern is not None:
        settings["masks"] = tuple(pattern)
    if families is not None:
        settings["families"] = tuple(families)
    return ResidualFlow(Nd, N, config=config, **settings)
