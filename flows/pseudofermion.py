"""Conditional pseudofermion flow (the paper's section 3 conditional model, after Abbott et al.,
Phys. Rev. D 106 (2022) 074506): an invertible map phi' = h(phi; U, U') of even-odd
pseudofermions that transports with both the unflowed field U and the flowed field U' = f(U).

Where it enters. For Nf = 2 the reweighting factor of a correlated-ensemble flow contains
det K(U') / det K(U), K = M^^dag M^ on the odd sites, estimated by (P2) of
:mod:`fermions.det_ratio`:

    log w = |eta|^2 - phi'^dag K(U')^{-1} phi' + log J,   phi = M^(U)^dag eta,  phi' = h(phi).

Any invertible h is unbiased; the zero-variance map h* = M^(U')^dag M^(U)^{-dag} hops through
U and U'. To O(kappa^2), with A = 1 + i mu~ gamma_5 and D = H_oe A^{-1} H_eo,

    h* = 1 + kappa^2 [D(U)^dag - D(U')^dag] A^{-dag} + O(kappa^4),                          (C0)

and D^dag = gamma_5 H_oe A^{-dag} H_eo gamma_5 is a sum over two-hop paths odd -> even -> odd of
(1 + s1 gamma_mu1) G (1 + s2 gamma_mu2) times the colour transport along the path, with G a
real combination of 1 and i gamma_5. The layers below are built from exactly these pieces,
with learned, field-dependent coefficients.

Split of the odd sublattice (the masks). A layer with split axis ``a`` and parity ``o``
updates the odd sites x with x_a = o (mod 2) (the *active* half A) from the odd sites with
x_a = 1 - o (the frozen half B). Two hops x -> x + s1 mu1^ -> x + s1 mu1^ + s2 mu2^ with one hop
along ``a`` and the other along nu != a land on B; these are the 24 paths of a layer (both
orders, 3 directions nu, 4 sign pairs). Paths of two hops along ``a`` or two hops
perpendicular to it stay on A and are not used. The default 16-layer schedule cycles
a = 0, 0, 1, 1, 2, 2, 3, 3 with o alternating (0, 1), twice: every odd site is updated
4 times, from every direction. With the packed odd layout (:mod:`fermions.evenodd`),
x_0 = 2h + 1 XOR r, r = (x_1 + x_2 + x_3) mod 2, so for a = 0 the parity of x_0 is 1 - r.

Layer (for x in A; phi(x) in C^{4N}, colour and spin):

    phi'(x) = e^{s(x)} phi(x) + sum_{f in (U, U')} sum_p C^f_p(x) T^f_p phi(x + s1 mu1^ + s2 mu2^),
    C^f_p(x) = sum_{g=1..4} c^f_{k(p), g}(x) Gamma_{p, g},                                    (C1)
    Gamma_{p, g} = (1 + s1 gamma_mu1) G_g1 (1 + s2 gamma_mu2) G_g2,   G in {1, i gamma_5},

T^f_p = U_{s1 mu1}(x) U_{s2 mu2}(x + s1 mu1^) with U_{-mu}(y) = U_mu(y - mu^)^dag and the
fermion boundary phases of the Dirac operator (antiperiodic in time), and phi'(x) = phi(x) on B.
Coefficients are tied over the four sign pairs of a path class k = (order, nu) (6 classes): the
field-dependent part follows the lattice symmetries through the features. The coefficients are
parametrised by their difference and sum parts, c^U = d + SUM_SCALE e, c^U' = -d + SUM_SCALE e
(the O(kappa^2) zero-variance map has e = 0; see SUM_SCALE), and s / S_SCALE, d_{k,g} and e_{k,g}
(49 numbers) are the outputs of a per-site network (one hidden tanh layer) of
gauge-invariant features: for every plane (mu, nu), the average of (1/N) Re tr P_mu,nu over the
four plaquettes with a corner at x, of U and of U' (12 features in 4d). The output weights start
at zero, so every layer starts as the identity.

Properties.
* Gauge covariance: phi(x) -> Omega(x) phi(x), U, U' -> their transforms by the same Omega:
  T_p -> Omega(x) T_p Omega(y)^dag, the coefficients are invariant, so phi'(x) -> Omega(x) phi'(x).
* Given U and U', (C1) is complex-linear in phi and triangular (A from B), so the real Jacobian
  is block-triangular with diagonal blocks e^{s(x)} 1_{2 * 4N} (real coordinates):

      log J = 2 * 4N * sum_{x in A} s(x)       (24 sum s(x) for SU(3)),                      (C2)

  independent of phi, and the inverse is explicit:
  phi(x) = e^{-s(x)} [phi'(x) - sum C T phi'(y)] on A.
* The whole model h = h_16 o ... o h_1 is linear in phi; log J is the sum of (C2).

Training (reverse KL with path gradients, :class:`PseudofermionObjective`). The target is
p(phi' | U') of (P1), the model density q(phi') = p(h^{-1}(phi') | U) / J, so the per-shot loss
-log w = log q(phi') - log p(phi' | U') - log[det K(U') / det K(U)] is the reverse KL up to a
constant of the training. Path gradient: phi' = h(phi) without gradient;

    G = d/d phi' [log q - log p] = 2 K(U')^{-1} phi' - 2 h^{-dag} K(U)^{-1} phi             (C3)

(complex cotangent convention of docs/design.md §7; log J does not depend on phi), then
the parameter gradient is the VJP of h at phi with cotangent G. K(U)^{-1} phi = M^(U)^{-1} eta
and K(U')^{-1} phi' come from two CG solves per shot. U and U' are fixed during this training.

Shapes: U, U' (*batch, 4, L0, L1, L2, L3, N, N); pseudofermions are packed odd spinors
(*lead, *batch, L0/2, L1, L2, L3, 4, N) with any extra leading axes (noise shots); log J has
shape (*batch). Runs under MPI (all neighbours through :meth:`fermions.EvenOdd.fetch`, sums
through the layouts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lattice.backend import Rng, namespace, to_host
from lattice.layout import Layout, infer_gauge_layout
from lattice import loops, su_n

from fermions.evenodd import even_odd
from fermions.gamma import GAMMA, GAMMA5
from fermions.wilson import normalise_bc

from .module import Params

__all__ = ["PFMask", "pf_schedule", "PseudofermionFlow", "PFContext", "BoundPFMap", "PseudofermionObjective",
           "save_pf_flow", "load_pf_flow", "N_STRUCTURES"]

N_STRUCTURES = 4          # Gamma_{p,g}: G_g1, G_g2 in {1, i gamma_5}
#: s(x) = S_SCALE * (network output 0). log w is far more sensitive to s than to the transport
#: coefficients (a uniform s shifts |phi_A|^2 of ~n/2 components, so var(log w) grows like s^2 n);
#: with this scale one optimiser step moves s by 1/100 of what it moves a coefficient.
S_SCALE = 0.01
#: The transport coefficients are c^U = d + SUM_SCALE e and c^U' = -d + SUM_SCALE e with d, e the
#: network outputs. h* needs, at O(kappa^2), only the difference d (T(U) - T(U') vanishes as
#: U' -> U); a sum part adds a plain hopping term, which K(U')^{-1} amplifies through its low
#: modes (lambda_min ~ mu~^2): unscaled, one Adam step of 1e-4 in e raised var(log w) a hundredfold.
SUM_SCALE = 0.01


@dataclass(frozen=True)
class PFMask:
    """Active half of the odd sublattice: odd sites with x_axis = parity (mod 2)."""
    axis: int
    parity: int

    def active(self, eo, xp):
        """Boolean (broadcastable to the local packed odd sites) of the active half A."""
        if self.axis == 0:
            par = 1 - eo.row_parity(xp)                      # x_0 = 2h + (1 XOR r) on odd sites
        else:
            par = eo.half.coords(xp)[self.axis] % 2
        return par == self.parity

    def as_dict(self) -> dict:
        return {"axis": self.axis, "parity": self.parity}


def _as_mask(m) -> PFMask:
    """A :class:`PFMask` from itself or from {"axis": a, "parity": o}; anything else is a ValueError."""
    if isinstance(m, PFMask):
        return m
    if isinstance(m, dict) and set(m) == {"axis", "parity"}:
        try:
            return PFMask(int(m["axis"]), int(m["parity"]))
        except (TypeError, ValueError):
            pass
    raise ValueError(f"invalid pseudofermion mask {m!r}: give a PFMask or a dict {{'axis': 0..3, 'parity': 0 or 1}}")


def pf_schedule(n_layers: int, Nd: int = 4) -> list:
    """The default alternating masks: axis (i // 2) mod Nd, parity i mod 2."""
    return [PFMask((i // 2) % Nd, i % 2) for i in range(n_layers)]


def _paths(axis: int, Nd: int = 4):
    """The path classes of a layer: list of (class index, [(d1, s1, d2, s2), ...]) with the
    first hop (d1, s1) and the second (d2, s2); class k = order * (Nd - 1) + j for the j-th
    direction nu != axis, order 0: first hop along ``axis``."""
    others = [nu for nu in range(Nd) if nu != axis]
    out = []
    for order in (0, 1):
        for j, nu in enumerate(others):
            d1, d2 = (axis, nu) if order == 0 else (nu, axis)
            out.append((order * (Nd - 1) + j, [(d1, s1, d2, s2) for s1 in (1, -1) for s2 in (1, -1)]))
    return out


def _structures(d1, s1, d2, s2):
    """Gamma_{p,g} of (C1) for g = (g1, g2) in {1, i g5}^2, as host nested lists (4, 4, 4)."""
    def mm(A, B):
        return [[sum(A[i][k] * B[k][j] for k in range(4)) for j in range(4)] for i in range(4)]
    eye = [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]
    ig5 = [[1j * GAMMA5[i][j] for j in range(4)] for i in range(4)]
    q1 = [[eye[i][j] + s1 * GAMMA[d1][i][j] for j in range(4)] for i in range(4)]
    q2 = [[eye[i][j] + s2 * GAMMA[d2][i][j] for j in range(4)] for i in range(4)]
    return [mm(mm(mm(q1, G1), q2), G2) for G1 in (eye, ig5) for G2 in (eye, ig5)]


class _Spin:
    """Elementwise spin algebra on spinors (..., 4, N): gamma_mu is monomial (one phase per row),
    so gamma_mu v, (1 + s gamma_mu) v and i gamma_5 v are row selections and phase multiplies."""

    def __init__(self, xp, dtype):
        self.xp = xp
        self.perm, self.phase = [], []
        for g in GAMMA:
            cols = [next(c for c in range(4) if g[r][c] != 0) for r in range(4)]
            self.perm.append(xp.asarray(cols, dtype=xp.int64))
            self.phase.append(xp.asarray([[complex(g[r][cols[r]])] for r in range(4)], dtype=dtype))
        self.ig5 = xp.asarray([[1j], [1j], [-1j], [-1j]], dtype=dtype)

    def Q(self, v, mu, s):
        """(1 + s gamma_mu) v (Hermitian)."""
        gv = self.xp.take(v, self.perm[mu], axis=v.ndim - 2) * self.phase[mu]
        return v + gv if s > 0 else v - gv

    def G(self, v, a):
        """G_a v with G_0 = 1, G_1 = i gamma_5."""
        return v if a == 0 else v * self.ig5

    def Gdag(self, v, a):
        return v if a == 0 else v * self.xp.conj(self.ig5)


def _dag(M):
    xp = namespace(M)
    return xp.conj(xp.matrix_transpose(M))


# ---------------------------------------------------------------------------- links and hops
class _HopLinks:
    """Packed links of one gauge field for hops between even and odd sites, with the fermion
    boundary phases: link(p, mu, s) = U_{s mu}(x) on the parity-p packed sites."""

    def __init__(self, U, layout: Layout, bc):
        xp = namespace(U)
        eo = even_odd(layout)
        mu_ax = U.ndim - 7
        coords = layout.coords(xp)
        self.eo = eo
        fwd = ([], [])
        for mu in range(4):
            Umu = U[(slice(None),) * mu_ax + (mu, ...)]
            ph = bc[mu]
            if ph != 1.0:
                last = coords[mu] == layout.global_shape[mu] - 1
                last = xp.reshape(last, tuple(last.shape) + (1, 1))
                Umu = Umu * xp.where(last, xp.asarray(ph, dtype=U.dtype), xp.asarray(1.0, dtype=U.dtype))
            e, o = eo.pack(Umu, inner=2)
            fwd[0].append(e)
            fwd[1].append(o)
        self.fwd = fwd
        # U_{-mu}(x) = U_mu(x - mu)^dag: the link of the neighbour of opposite parity
        self.bwd = tuple([_dag(eo.fetch(fwd[1 - p][mu], mu, -1, p, inner=2)) for mu in range(4)] for p in (0, 1))

    def link(self, p, mu, s):
        return self.fwd[p][mu] if s > 0 else self.bwd[p][mu]

    def hop(self, F, mu, s, target):
        """G(x) = U_{s mu}(x) F(x + s mu^) on the parity-``target`` sites (F on the other parity);
        F (..., 4, N). The adjoint of hop(mu, s, p) is hop(mu, -s, 1 - p)."""
        xp = namespace(F)
        G = self.eo.fetch(F, mu, s, target, inner=2)
        return xp.matmul(G, xp.matrix_transpose(self.link(target, mu, s)))


def _features(U, layout: Layout):
    """Gauge-invariant features on the packed odd sites, (*batch, l0/2, l1, l2, l3, 6):
    for each plane mu < nu the mean of (1/N) Re tr P_mu,nu over the 4 plaquettes with a corner at x."""
    xp = namespace(U)
    N = U.shape[-1]
    eo = even_odd(layout)
    out = []
    for mu in range(4):
        for nu in range(mu + 1, 4):
            P = xp.real(su_n.trace(loops.plaquette_field(U, mu, nu, layout))) / N
            Pm = layout.shift(P, mu, -1, inner=0)
            avg = 0.25 * (P + Pm + layout.shift(P, nu, -1, inner=0) + layout.shift(Pm, nu, -1, inner=0))
            out.append(eo.pack(xp.astype(avg, xp.float64), inner=0)[1])
    return xp.stack(out, axis=-1)


# ---------------------------------------------------------------------------- per-site network
def _net_forward(params, prefix, feats, hidden):
    """out = W2 tanh(W1 f + b1) + b2 (or W2 f + b2 without a hidden layer), per site."""
    xp = namespace(feats)
    if hidden:
        z = xp.tanh(xp.matmul(feats, xp.matrix_transpose(params[prefix + "W1"])) + params[prefix + "b1"])
    else:
        z = feats
    return xp.matmul(z, xp.matrix_transpose(params[prefix + "W2"])) + params[prefix + "b2"], z


def _net_vjp(params, prefix, feats, z, out_bar, hidden):
    xp = namespace(feats)
    lead = tuple(range(out_bar.ndim - 1))
    g = {prefix + "W2": xp.sum(out_bar[..., :, None] * z[..., None, :], axis=lead),
         prefix + "b2": xp.sum(out_bar, axis=lead)}
    if hidden:
        zb = xp.matmul(out_bar, params[prefix + "W2"]) * (1.0 - z * z)
        g[prefix + "W1"] = xp.sum(zb[..., :, None] * feats[..., None, :], axis=lead)
        g[prefix + "b1"] = xp.sum(zb, axis=lead)
    return g


# ---------------------------------------------------------------------------- the model
class PFContext:
    """Everything a :class:`PseudofermionFlow` needs for fixed (U, U') and parameters: packed
    links of both fields, the features, the per-layer coefficient fields and masks."""

    def __init__(self, model, params, U, Up, layout):
        xp = namespace(U, Up)
        self.xp, self.layout, self.model = xp, layout, model
        self.eo = even_odd(layout)
        self.batch = tuple(U.shape[: U.ndim - 7])
        self.links = (_HopLinks(U, layout, model.bc), _HopLinks(Up, layout, model.bc))
        f = xp.concat([_features(U, layout), _features(Up, layout)], axis=-1)
        self.feats = f
        self.dtype = U.dtype
        self.layers = []
        for i, m in enumerate(model.masks):
            out, z = _net_forward(params, f"layer{i}.", f, model.hidden)
            act = m.active(self.eo, xp)                                   # (1|l0/2, l1, l2, l3)
            s = xp.where(act, S_SCALE * out[..., 0], xp.zeros_like(out[..., 0]))
            de = xp.reshape(out[..., 1:], tuple(out.shape[:-1]) + (2, 2 * (4 - 1), N_STRUCTURES))
            d, e = de[..., 0, :, :], SUM_SCALE * de[..., 1, :, :]
            coef = xp.stack([d + e, e - d], axis=-3)                       # c^U, c^U' of (C1)
            self.layers.append({"mask": m, "active": act, "s": s, "coef": coef, "z": z,
                                "es": xp.astype(xp.exp(s), self.dtype)})
        self.spin = _Spin(xp, self.dtype)

    def coef(self, lay, f, k, g):
        """c^f_{k,g}(x) broadcastable to spinors (*batch, sites, 1, 1), in the field dtype."""
        return self.xp.astype(lay["coef"][..., f, k, g], self.dtype)[..., None, None]


class PseudofermionFlow:
    """The conditional pseudofermion model: ``n_layers`` coupling layers (C1) with the masks of
    :func:`pf_schedule` and per-site networks of width ``hidden`` (0: linear in the features).
    The settings (``n_layers``, ``hidden``, ``masks``; TOML ``[pf_flow]``) are one
    :class:`flows.PseudofermionFlowConfig`: pass ``config=`` or them as arguments; ``bc`` (the
    boundary phases, from ``[fermions]``) is the operator's, not a setting.

    Parameters per layer i: ``layer{i}.W1`` (hidden, 12), ``layer{i}.b1`` (hidden,),
    ``layer{i}.W2`` (49, hidden), ``layer{i}.b2`` (49,) (output 0 is s / S_SCALE, outputs 1..24
    the difference parts d_{k,g}, 25..48 the sum parts e_{k,g} / SUM_SCALE, k in 6 classes, g in
    4 structures).
    """

    n_out = 1 + 2 * 6 * N_STRUCTURES
    n_features = 12

    def __init__(self, n_layers: int | None = None, hidden: int | None = None, bc="antiperiodic", masks=None, *,
                 config=None):
        from .config import PseudofermionFlowConfig
        kw = {k: v for k, v in (("n_layers", n_layers), ("hidden", hidden), ("masks", masks)) if v is not None}
        if config is None and masks is not None and n_layers is None:
            kw["n_layers"] = len(masks)
        config = PseudofermionFlowConfig.resolve(config, kw, "PseudofermionFlow")
        self.n_layers, self.hidden = config.n_layers, config.hidden
        self.bc = normalise_bc(bc)
        self.masks = [_as_mask(m) for m in (config.masks if config.masks is not None else pf_schedule(self.n_layers))]
        self.settings = config.replace(masks=tuple(m.as_dict() for m in self.masks))

    def __repr__(self):
        return f"PseudofermionFlow(n_layers={self.n_layers}, hidden={self.hidden})"

    # ---- configuration and parameters
    def config(self) -> dict:
        """``{"class", "bc"}`` and the resolved :class:`flows.PseudofermionFlowConfig` (explicit masks)."""
        return {"class": "PseudofermionFlow", **self.settings.as_dict(),
                "bc": [[float(complex(b).real), float(complex(b).imag)] for b in self.bc]}

    @classmethod
    def from_config(cls, cfg: dict) -> "PseudofermionFlow":
        if cfg.get("class") != "PseudofermionFlow":
            raise ValueError(f"not a pseudofermion flow configuration: class {cfg.get('class')!r}")
        from .config import PseudofermionFlowConfig
        bc = tuple(complex(re, im) for re, im in cfg["bc"])
        settings = {k: v for k, v in cfg.items() if k not in ("class", "bc")}
        return cls(bc=bc, config=PseudofermionFlowConfig.from_dict(settings))

    def param_shapes(self) -> dict:
        F, H, O = self.n_features, self.hidden, self.n_out
        out = {}
        for i in range(self.n_layers):
            if H:
                out[f"layer{i}.W1"] = (H, F)
                out[f"layer{i}.b1"] = (H,)
            out[f"layer{i}.W2"] = (O, H if H else F)
            out[f"layer{i}.b2"] = (O,)
        return out

    def init(self, seed: int = 0, xp=None) -> Params:
        """Identity start: output weights zero; hidden weights N(0, 1/F)."""
        rng = Rng(seed, xp=xp)
        xp = rng.xp
        p = {}
        for k, shp in self.param_shapes().items():
            if k.endswith("W1"):
                p[k] = rng.child(len(p)).normal(lead=shp) / math.sqrt(self.n_features)
            else:
                p[k] = xp.zeros(shp, dtype=xp.float64)
        return p

    def hopping_init(self, params, kappa: float, mu: float) -> Params:
        """Parameters whose output biases put the model at the O(kappa^2) expansion (C0) of the
        zero-variance map (the output weights stay as given, zero after :meth:`init`).

        From (C0), kappa^2 [D(U)^dag - D(U')^dag] A^{-dag} with A^{-dag} = (1 + mu~ i g5)/(1 + mu~^2)
        gives, per two-hop path p, kappa^2/(1 + mu~^2)^2 Q1 (1 + mu~ G_1) Q2 (1 + mu~ G_1) (T_p(U) -
        T_p(U')): c^U_{k,g} = -c^U'_{k,g} = kappa^2 mu~^(a+b) / (1 + mu~^2)^2, g = 2a + b, shared by
        the n_p layers that contain the path (its first order is additive over layers), so each
        layer gets 1/n_p of it; n_p = m(a) + m(nu), m(axis) the number of layers with that split
        axis per parity (exact when both parities of an axis are visited equally often, as in
        :func:`pf_schedule` with n_layers a multiple of 2). s stays 0. Straight two-hop paths
        (x -> x +- 2 mu^) of (C0) cross no split and are not represented; backtracking ones cancel
        between U and U'. This start removes about half of the per-shot variance of log w at
        kappa = 0.17 on small lattices, before any training."""
        xp = namespace(params[next(iter(params))])
        mt = 2.0 * float(kappa) * float(mu)
        base = [float(kappa) ** 2 * mt ** (a + b) / (1.0 + mt * mt) ** 2 for a in (0, 1) for b in (0, 1)]
        m = {a: sum(1 for q in self.masks if q.axis == a) / 2.0 for a in range(4)}
        out = dict(params)
        for i, mask in enumerate(self.masks):
            vals = [0.0]
            for k, paths in _paths(mask.axis):                     # the difference part d
                d1, _, d2, _ = paths[0]
                nu = d2 if d1 == mask.axis else d1
                n_p = m[mask.axis] + m[nu]
                vals += [v / n_p for v in base]
            vals += [0.0] * (len(vals) - 1)                            # the sum part e
            out[f"layer{i}.b2"] = xp.asarray(vals, dtype=xp.float64)
        return out

    def describe(self) -> str:
        n = sum(math.prod(s) for s in self.param_shapes().values())
        return (f"pseudofermion flow: {self.n_layers} conditional coupling layers on the odd sites, "
                f"24 two-hop transports with U and U' each, network width {self.hidden}, {n} parameters")

    # ---- maps
    def prepare(self, params, U, Up, layout: Layout | None = None) -> PFContext:
        """The :class:`PFContext` for gauge fields U (unflowed) and Up = f(U) (flowed)."""
        if tuple(U.shape) != tuple(Up.shape):
            raise ValueError(f"U and U' must have the same shape, got {tuple(U.shape)} and {tuple(Up.shape)}")
        layout = infer_gauge_layout(U, layout)
        if layout.Nd != 4:
            raise ValueError(f"the pseudofermion flow is four-dimensional; got a {layout.Nd}d gauge field")
        return PFContext(self, params, U, Up, layout)

    def bind(self, params, U, Up, layout: Layout | None = None) -> "BoundPFMap":
        """The map phi -> (h(phi), log J) for fixed U, U' (the ``pf_map`` of
        :func:`fermions.log_det_ratio`)."""
        return BoundPFMap(self, self.prepare(params, U, Up, layout))

    def _check(self, ctx, phi):
        ctx.eo.half.check_sites(phi, 2, "pseudofermion field (packed odd sites)")
        if tuple(phi.shape[-2:]) != (4, ctx.links[0].fwd[0][0].shape[-1]):
            raise ValueError(f"pseudofermion field must end in (4, N), got {tuple(phi.shape)}")

    def _class_terms(self, ctx, lay, phi_B):
        """W^f_{k,g} = sum_{p in k} Gamma_{p,g} T^f_p phi_B for every field f, class k and
        structure g = 2 a + b (Gamma = Q1 G_a Q2 G_b): yields (f, k, [W_g for g in 0..3])."""
        sp = ctx.spin
        for f, links in enumerate(ctx.links):
            first = {}
            for k, paths in _paths(lay["mask"].axis):
                W = [None] * N_STRUCTURES
                for (d1, s1, d2, s2) in paths:
                    if (d2, s2) not in first:
                        first[(d2, s2)] = links.hop(phi_B, d2, s2, 0)
                    v = links.hop(first[(d2, s2)], d1, s1, 1)
                    u = [sp.Q(sp.G(v, b), d2, s2) for b in (0, 1)]
                    for a in (0, 1):
                        for b in (0, 1):
                            t = sp.Q(sp.G(u[b], a), d1, s1)
                            g = 2 * a + b
                            W[g] = t if W[g] is None else W[g] + t
                yield f, k, W

    def _transport(self, ctx, lay, phi_B):
        """sum_f sum_p C^f_p T^f_p phi_B on the odd sites (C1)."""
        out = None
        for f, k, W in self._class_terms(ctx, lay, phi_B):
            for g in range(N_STRUCTURES):
                t = ctx.coef(lay, f, k, g) * W[g]
                out = t if out is None else out + t
        return out

    def _transport_adjoint(self, ctx, lay, g_A):
        """Adjoint of :meth:`_transport` applied to g_A (zero off A); the result lives on all odd
        sites. C_p^dag = sum_{a,b} c_{ab} G_b^dag Q2 G_a^dag Q1, then the reversed hops."""
        sp = ctx.spin
        out = None
        q1 = {}
        for f, links in enumerate(ctx.links):
            acc = {}
            for k, paths in _paths(lay["mask"].axis):
                c = [ctx.coef(lay, f, k, g) for g in range(N_STRUCTURES)]
                for (d1, s1, d2, s2) in paths:
                    if (d1, s1) not in q1:
                        q1[(d1, s1)] = sp.Q(g_A, d1, s1)
                    t = [sp.Gdag(q1[(d1, s1)], a) for a in (0, 1)]
                    u = None
                    for b in (0, 1):
                        r = c[b] * t[0] + c[2 + b] * t[1]
                        w = sp.Gdag(sp.Q(r, d2, s2), b)
                        u = w if u is None else u + w
                    e = links.hop(u, d1, -s1, 0)
                    acc[(d2, s2)] = e if (d2, s2) not in acc else acc[(d2, s2)] + e
            for (d2, s2), e in acc.items():
                t = links.hop(e, d2, -s2, 1)
                out = t if out is None else out + t
        return out

    def _masks(self, ctx, lay):
        a = lay["active"]
        return a[..., None, None]

    def _layer_forward(self, ctx, lay, phi):
        xp = ctx.xp
        A = self._masks(ctx, lay)
        phi_B = xp.where(A, xp.zeros_like(phi), phi)
        new = lay["es"][..., None, None] * phi + self._transport(ctx, lay, phi_B)
        return xp.where(A, new, phi)

    def _layer_inverse(self, ctx, lay, phi_p):
        xp = ctx.xp
        A = self._masks(ctx, lay)
        phi_B = xp.where(A, xp.zeros_like(phi_p), phi_p)
        old = (phi_p - self._transport(ctx, lay, phi_B)) / lay["es"][..., None, None]
        return xp.where(A, old, phi_p)

    def _log_jac(self, ctx):
        xp = ctx.xp
        N = ctx.links[0].fwd[0][0].shape[-1]
        tot = None
        for lay in ctx.layers:
            t = lay["s"]
            tot = t if tot is None else tot + t
        return (2.0 * 4 * N) * ctx.eo.half.sum(xp.astype(tot, xp.float64))

    def forward(self, ctx: PFContext, phi, keep: bool = False):
        """phi' = h(phi) and log J (shape (*batch)). With ``keep`` also the list of layer inputs
        (for :meth:`vjp`)."""
        self._check(ctx, phi)
        inputs = []
        for lay in ctx.layers:
            if keep:
                inputs.append(phi)
            phi = self._layer_forward(ctx, lay, phi)
        lj = self._log_jac(ctx)
        return (phi, lj, inputs) if keep else (phi, lj)

    def inverse(self, ctx: PFContext, phi_p):
        """phi = h^{-1}(phi') and log |det d phi / d phi'| = -log J."""
        self._check(ctx, phi_p)
        for lay in reversed(ctx.layers):
            phi_p = self._layer_inverse(ctx, lay, phi_p)
        return phi_p, -self._log_jac(ctx)

    def vjp(self, params, ctx: PFContext, inputs, phi_bar, log_jac_bar=None):
        """VJP of (phi', log J) = h(phi): returns (phi_bar_in, param cotangents). ``inputs`` are
        the layer inputs of :meth:`forward` (keep=True); ``log_jac_bar`` has shape (*batch) or None."""
        xp = ctx.xp
        N = phi_bar.shape[-1]
        grads = {}
        nb = len(ctx.batch)
        for i in reversed(range(len(ctx.layers))):
            lay = ctx.layers[i]
            phi = inputs[i]
            A = self._masks(ctx, lay)
            g_A = xp.where(A, phi_bar, xp.zeros_like(phi_bar))
            # coefficient cotangents: Re sum conj(g) Gamma_g v over spin, colour, shots
            phi_B = xp.where(A, xp.zeros_like(phi), phi)
            sh = tuple(lay["coef"].shape)                                    # (*batch, sites, 2, 6, 4)
            cbar = [[None] * 6 for _ in range(2)]
            for f, k, W in self._class_terms(ctx, lay, phi_B):
                r = [_sum_lead(xp.real(xp.sum(xp.conj(g_A) * w, axis=(-2, -1))), w.ndim - 2 - 4 - nb) for w in W]
                cbar[f][k] = xp.stack(r, axis=-1)                                # (*batch, sites, 4)
            coef_bar = xp.stack([xp.stack(c, axis=-2) for c in cbar], axis=-3)
            # s: from e^s phi on A and from log J = 2 * 4N * sum_A s
            sbar = xp.real(xp.sum(xp.conj(g_A) * (lay["es"][..., None, None] * phi), axis=(-2, -1)))
            sbar = _sum_lead(sbar, sbar.ndim - 4 - nb)
            if log_jac_bar is not None:
                sbar = sbar + (2.0 * 4 * N) * xp.reshape(log_jac_bar, tuple(log_jac_bar.shape) + (1, 1, 1, 1))
            sbar = xp.where(lay["active"], sbar, xp.zeros_like(sbar))
            coef_bar = xp.astype(coef_bar, xp.float64)
            cU, cUp = coef_bar[..., 0, :, :], coef_bar[..., 1, :, :]
            de_bar = xp.stack([cU - cUp, SUM_SCALE * (cU + cUp)], axis=-3)
            out_bar = xp.concat([S_SCALE * sbar[..., None], xp.reshape(de_bar, sh[:-3] + (48,))],
                                axis=-1)
            grads.update(_net_vjp(params, f"layer{i}.", ctx.feats, lay["z"], out_bar, self.hidden))
            # cotangent of the layer input
            back = self._transport_adjoint(ctx, lay, g_A)
            phi_bar = xp.where(A, lay["es"][..., None, None] * phi_bar, phi_bar + back)
        return phi_bar, grads

    def inverse_vjp(self, ctx: PFContext, phi_bar):
        """Cotangent of phi' given the cotangent of phi = h^{-1}(phi') (parameters frozen):
        (d h^{-1})^dag phi_bar, i.e. h^{-dag} phi_bar since h is complex-linear."""
        xp = ctx.xp
        for lay in ctx.layers:
            A = self._masks(ctx, lay)
            g_A = xp.where(A, phi_bar / lay["es"][..., None, None], xp.zeros_like(phi_bar))
            back = self._transport_adjoint(ctx, lay, g_A)
            phi_bar = xp.where(A, g_A, phi_bar - back)
        return phi_bar


def _sum_lead(x, n: int):
    """Sum over the first n axes (the noise shots)."""
    xp = namespace(x)
    return xp.sum(x, axis=tuple(range(n))) if n > 0 else x


class BoundPFMap:
    """phi -> (h(phi), log J) for fixed fields; callable as the ``pf_map`` of the estimator."""

    name = "conditional flow"

    def __init__(self, model: PseudofermionFlow, ctx: PFContext):
        self.model, self.ctx = model, ctx

    def __call__(self, phi):
        return self.model.forward(self.ctx, phi)

    def inverse(self, phi_p):
        return self.model.inverse(self.ctx, phi_p)


# ---------------------------------------------------------------------------- training objective
class PseudofermionObjective:
    """The training "base" of a pseudofermion flow for :func:`flows.train`: pairs (U, U' = f(U))
    of the training configurations, fresh noise each step, loss E[-log w] of (P2) with the
    path gradient (C3) or the plain reparameterised gradient.

    Parameters
    ----------
    U, Up : (n_cfg, 4, L0..L3, N, N) unflowed and flowed configurations.
    kappa, mu, bc : the twisted-mass operator of K = M^^dag M^.
    n_shots : noise vectors per configuration and step.
    holdout : configurations (fraction or count) held out for the ESS and variance monitor.
    tol, maxiter : CG settings of the two solves per shot.
    """

    kind = "pseudofermion"

    def __init__(self, U, Up, kappa: float, mu: float, bc="antiperiodic", n_shots: int = 4, holdout=0.25,
                 tol: float = 1e-10, maxiter: int | None = None, layout: Layout | None = None):
        if tuple(U.shape) != tuple(Up.shape) or U.ndim != 8:
            raise ValueError(f"U and U' must both be (n_cfg, 4, L0..L3, N, N); got {tuple(U.shape)}, {tuple(Up.shape)}")
        n = int(U.shape[0])
        h = int(round(holdout * n)) if isinstance(holdout, float) else int(holdout)
        if not 0 <= h < n:
            raise ValueError(f"holdout {holdout} leaves no training configuration out of {n}")
        self.U, self.Up = U, Up
        self.n_train, self.n_holdout = n - h, h
        self.kappa, self.mu, self.bc = float(kappa), float(mu), bc
        self.n_shots, self.tol, self.maxiter = int(n_shots), float(tol), maxiter
        self.layout = layout if layout is not None else infer_gauge_layout(U[0])

    def sample(self, batch_size: int, rng: Rng):
        """(configuration indices, noise seed) of one step."""
        idx = [int(i) for i in to_host(rng.integers(self.n_train, lead=(int(batch_size),)))]
        return idx, int(to_host(rng.child(1).integers(2**31 - 1, lead=(1,)))[0])

    def _ops(self, idx):
        from fermions.twisted_mass import TwistedMassWilson
        xp = namespace(self.U)
        U = xp.stack([self.U[i, ...] for i in idx])
        Up = xp.stack([self.Up[i, ...] for i in idx])
        return (U, Up, TwistedMassWilson(U, self.kappa, self.mu, self.layout, self.bc, check=False),
                TwistedMassWilson(Up, self.kappa, self.mu, self.layout, self.bc, check=False))

    def log_weights(self, model, params, idx, seed, n_shots=None, want_grad=None):
        """Per-shot log w of (P2), (n_shots, len(idx)), float64; with ``want_grad`` in
        ("path", "plain") also (loss, parameter gradient of the mean of -log w)."""
        from fermions.cg import cg
        from fermions.det_ratio import draw_odd_noise
        n_shots = self.n_shots if n_shots is None else int(n_shots)
        U, Up, op, opp = self._ops(idx)
        xp = namespace(U)
        half = op.half_layout
        eta = xp.astype(draw_odd_noise(Rng(seed, xp=xp), half, (n_shots, len(idx)), op.N), U.dtype)
        ctx = model.prepare(params, U, Up, self.layout)
        phi = op.apply_schur_dagger(eta)
        phi_p, lj, inputs = model.forward(ctx, phi, keep=True)
        zp, _ = cg(opp.apply_schur_normal, phi_p, tol=self.tol, maxiter=self.maxiter, layout=half,
                   what="CG on K(U') (pseudofermion flow training)")
        y = opp.apply_schur(zp)
        dens = xp.real(eta * xp.conj(eta)) - 2.0 * xp.real(xp.conj(phi_p) * zp) + xp.real(y * xp.conj(y))
        lw = half.sum(xp.astype(dens, xp.float64), inner=2) + lj
        if want_grad is None:
            return lw
        n_tot = float(n_shots * len(idx))
        if want_grad == "path":
            z, _ = cg(op.apply_schur_normal, phi, tol=self.tol, maxiter=self.maxiter, layout=half,
                      what="CG on K(U) (pseudofermion flow training)")
            G = (2.0 * zp - 2.0 * model.inverse_vjp(ctx, z)) / n_tot
            _, grads = model.vjp(params, ctx, inputs, G)
        elif want_grad == "plain":
            ljb = xp.full(tuple(lj.shape), -float(n_shots) / n_tot, dtype=xp.float64)
            _, grads = model.vjp(params, ctx, inputs, (2.0 / n_tot) * zp, ljb)
        else:
            raise ValueError(f"estimator must be 'path' or 'plain', got {want_grad!r}")
        return lw, float(-xp.mean(lw)), grads

    def loss_and_grad(self, model, params, z, estimator, layout=None):
        """The hook :func:`flows.train` calls: (loss, grads, log w centred per configuration)."""
        idx, seed = z
        lw, loss, grads = self.log_weights(model, params, idx, seed, want_grad=estimator)
        return loss, grads, _centred(lw)

    def holdout_log_weights(self, model, params, seed: int = 0, n_shots=None, n_configs=None):
        """Per-shot log w on the held-out configurations (the first ``n_configs`` of them, default
        all), shape (n_shots, n_configs)."""
        n = self.n_holdout if n_configs is None else max(1, min(int(n_configs), self.n_holdout))
        idx = list(range(self.n_train, self.n_train + n))
        return self.log_weights(model, params, idx, 2**30 + seed, n_shots=n_shots)


def _centred(lw):
    """log w minus its per-configuration mean over shots, flattened: the shot noise alone (the
    ESS of these pooled weights is that of the determinant-ratio shots of one configuration)."""
    xp = namespace(lw)
    return xp.reshape(lw - xp.mean(lw, axis=0, keepdims=True), (-1,))


# ---------------------------------------------------------------------------- files
def save_pf_flow(path, model: PseudofermionFlow, params, extra: dict | None = None, provenance: dict | None = None):
    """Write model configuration, parameters and ``extra`` (JSON-able) atomically, with the
    provenance record ``provenance`` (default that of this process: :func:`flows.save_params`)."""
    from .serialize import save_params
    save_params(path, params, {"model": model.config(), **(extra or {})}, provenance=provenance)


def load_pf_flow(path, xp=None):
    """(model, params, config dict) from :func:`save_pf_flow`."""
    from .serialize import load_params, read_config, ParamFileError
    cfg = read_config(path)
    try:
        model = PseudofermionFlow.from_config(cfg["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ParamFileError(f"{path}: not a pseudofermion flow file ({exc})") from exc
    params, cfg = load_params(path, template=model.param_shapes(), xp=xp)
    return model, params, cfg
